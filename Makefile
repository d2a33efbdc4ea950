# `make run` and `make test` work on a fresh clone: they create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint format bench load screenshots clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is required (set PYTHON=...)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Streamlit's own settings (STREAMLIT_SERVER_PORT, ...) stay in force: none are passed here.
run: install
	$(PY) -m core db upgrade
	$(PY) -m core users bootstrap-admin
	$(VENV)/bin/streamlit run app.py

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) bench/engine.py

# Seeds 100,000 runs in a scratch Postgres database (BENCH_DATABASE_URL or TEST_DATABASE_URL's
# server) and times every monitoring query; the last line is `monitoring total: <seconds> s`.
bench-monitoring: install
	$(PY) bench/monitoring.py

# 200 concurrent workflows under injected faults. A scratch SQLite file unless LOAD_DATABASE_URL
# names a database (e.g. a scratch Postgres one): never your real data.
LOAD_WORKFLOWS ?= 200
load: install
	@scratch=$$(mktemp -d) && \
	DATA_DIR=$$scratch DATABASE_URL=$${LOAD_DATABASE_URL:-sqlite:///$$scratch/load.db} \
	$(PY) -m core load --workflows $(LOAD_WORKFLOWS); status=$$?; rm -rf $$scratch; exit $$status

# Photographs each page of a fresh offline app into docs/ (needs Debian's chromium).
screenshots: install
	$(PY) -m tests.e2e.screenshots

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
