# `make run` and `make test` each set up .venv on a fresh machine, then do their job.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test install lint clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/opsbot index
	@if [ -n "$$SLACK_BOT_TOKEN" ] || grep -qs '^SLACK_BOT_TOKEN=.' .env; then \
		exec $(BIN)/opsbot serve; \
	else \
		exec $(BIN)/opsbot shell; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check bot tests

test: $(STAMP)
	$(BIN)/ruff check bot tests
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) opsbot.db opsbot.db-wal opsbot.db-shm
