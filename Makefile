# `make run` and `make test` work on a fresh clone: they create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run api worker test lint format bench bench-sse load screenshots reliability-report mutants clean

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

# The HTTP API on API_HOST:API_PORT (default 127.0.0.1:8000); its OpenAPI page is at /docs.
api: install
	$(PY) -m core db upgrade
	$(PY) -m core api

# A Celery worker (EXECUTOR=celery): takes runs from REDIS_URL (or CELERY_BROKER_URL), writes to
# DATABASE_URL. Start as many as you like, here or on other machines; CONCURRENCY runs at once each.
worker: install
	$(PY) -m core db upgrade
	$(PY) -m core worker $(if $(CONCURRENCY),--concurrency $(CONCURRENCY))

# Two test processes by default (each with its own scratch Postgres database and Redis
# database number); TEST_PROCESSES=0 runs everything in this one.
TEST_PROCESSES ?= 2
test: install
	$(PY) -m pytest -n $(TEST_PROCESSES)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The engine against Celery and Prefect in one run (bench/engine.py's docstring: sections,
# targets, options via BENCH_ARGS, e.g. BENCH_ARGS="--sections overhead,peers --runs 10").
# Needs Postgres (BENCH_DATABASE_URL or TEST_DATABASE_URL) and Redis (BENCH_REDIS_URL or
# REDIS_URL). The peers live in their own virtualenv, made here on first use, never in .venv.
PEERS_VENV ?= .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed-stamp

$(PEERS_STAMP): bench/peers-requirements.txt
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet -r bench/peers-requirements.txt
	@touch $(PEERS_STAMP)

bench: install $(PEERS_STAMP)
	$(PY) bench/engine.py --peers-python $(PEERS_VENV)/bin/python $(BENCH_ARGS)

# Seeds 100,000 runs in a scratch Postgres database (BENCH_DATABASE_URL or TEST_DATABASE_URL's
# server) and times every monitoring query; the last line is `monitoring total: <seconds> s`.
bench-monitoring: install
	$(PY) bench/monitoring.py

# 500 concurrent run streams on one API process (a scratch Postgres database on
# BENCH_DATABASE_URL's or TEST_DATABASE_URL's server): the API's CPU and memory, and the delay
# from a committed state change to its event at a client, p50/p95.
bench-sse: install
	$(PY) bench/sse.py

# 200 concurrent workflows under injected faults. A scratch SQLite file unless LOAD_DATABASE_URL
# names a database (e.g. a scratch Postgres one): never your real data. With EXECUTOR=celery
# (and REDIS_URL) the runs go to WORKERS Celery workers the load run starts and stops itself.
LOAD_WORKFLOWS ?= 200
WORKERS ?= 2
load: install
	@scratch=$$(mktemp -d) && \
	DATA_DIR=$$scratch DATABASE_URL=$${LOAD_DATABASE_URL:-sqlite:///$$scratch/load.db} \
	$(PY) -m core load --workflows $(LOAD_WORKFLOWS) --workers $(WORKERS); \
	status=$$?; rm -rf $$scratch; exit $$status

# The README's reliability table, from the figures the tests last measured (.reliability/).
reliability-report: install
	@$(PY) -m tests.reliability

# Mutation testing of the guards (docs/mutants.md): the ledger, the claim and fencing functions
# and the transition check, against their tests, on Postgres. Not part of `make test`.
MUTANT_FUNCTIONS := core.credits.x__apply core.credits.x_grant core.credits.x_adjust \
	core.credits.x_reserve core.credits.x_refund core.workflows.x_claim \
	core.workflows.x_heartbeat core.workflows.x_release core.workflows.x__move_run \
	core.run_writes.x_apply_on core.run_writes.x__apply_in_one_statement core.run_writes.x__parameters \
	core.run_writes.x__step_row core.run_writes.x_claim_of_new_run core.run_writes.x_applied \
	core.run_start.x_start core.run_start.x_start_then core.run_start.x_written \
	core.run_start.x__values core.workflows.x__start_in_one_statement \
	core.workflows.x__start_claimed core.workflows.x__queued_view \
	core.states.x_step_sources core.states.x_workflow_sources
mutants: install
	@test -n "$$TEST_DATABASE_URL" || { echo "make mutants runs on Postgres: set TEST_DATABASE_URL"; exit 1; }
	REQUIRE_POSTGRES=1 $(VENV)/bin/mutmut run --max-children 2 $(foreach f,$(MUTANT_FUNCTIONS),'$(f)__mutmut_*')
	@$(VENV)/bin/mutmut results --all true | grep -F $(addprefix -e ,$(addsuffix __mutmut_,$(MUTANT_FUNCTIONS))) \
		| awk '{n++; s[$$2]++} $$2 != "killed" {print} END {for (k in s) print k, s[k]; print "score:", s["killed"] "/" n}'

# Photographs each page of a fresh offline app into docs/ (needs Debian's chromium).
screenshots: install
	$(PY) -m tests.e2e.screenshots

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache mutants .reliability
