# `make run` and `make test` each set up .venv on a fresh machine, then do their job.
# `make test` runs the fault suite (tests/fault) at small scale; `make fault` runs it at full size, with its table.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test fault install lint clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/opsbot index
	@# .env read as opsbot reads it (python-dotenv: `export NAME=`, spaces and quotes allowed)
	@if [ -n "$$SLACK_BOT_TOKEN" ] || $(BIN)/python -c 'import sys; from dotenv import dotenv_values; \
		sys.exit(not (dotenv_values(".env").get("SLACK_BOT_TOKEN") or "").strip())' 2>/dev/null; then \
		exec $(BIN)/opsbot serve; \
	else \
		exec $(BIN)/opsbot shell; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check bot tests

# Two workers (pytest-xdist), a test file each at a time: most tests wait on processes and sockets, not
# the CPU, so the suite takes about 5.5 minutes instead of 9 on two cores.
test: $(STAMP)
	$(BIN)/ruff check bot tests
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

fault: $(STAMP)
	OPSBOT_FAULT_SCALE=full $(BIN)/python -m pytest -q -m fault tests/fault tests/ops/test_properties.py

clean:
	rm -rf $(VENV) opsbot.db opsbot.db-wal opsbot.db-shm opsbot.db.migrate-lock
