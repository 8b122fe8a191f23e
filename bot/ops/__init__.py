"""Operations: deploys and rollbacks (request, approve, run), CI/CD deploy events, incidents, DORA metrics."""
