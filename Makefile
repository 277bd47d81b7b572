# driftline: `make demo` runs the stack on the embedded store; `make test` runs lint and the whole suite.
# Everything is installed here, into .venv and (for the test services) from Debian's packages.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip

.PHONY: demo test install services lint typecheck pytest bench clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"
	$(PIP) install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

# What the tests need: ClickHouse and Chromium installed (the tests start them), PostgreSQL
# answering at 127.0.0.1:5432 (the one there, or one started here).
services:
	./scripts/install_clickhouse.sh
	./scripts/ensure_postgres.sh
	./scripts/install_chromium.sh

demo: install
	$(BIN)/driftline up --demo

lint: install
	$(BIN)/ruff check driftline tests bench
	$(BIN)/ruff format --check driftline tests bench

typecheck: install
	$(BIN)/mypy

pytest: install services
	$(BIN)/pytest -q

test: install services lint typecheck pytest

# Each prints its figures against a peer measured in the same run; drift_scale's 100M rows
# take a while: `$(BIN)/python -m bench.drift_scale --sizes 10000000 100000000`.
bench: install
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.drift_vs_evidently
	$(BIN)/python -m bench.drift_scale --sizes 10000000
	$(BIN)/python -m bench.dashboard_queries
	$(BIN)/python -m bench.load

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache artifacts
