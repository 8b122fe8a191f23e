"""Tools for measuring opsbot: benchmarks (`opsbot bench`) and retrieval and routing evaluation (`opsbot eval`)."""
