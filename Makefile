# Ringfence: `make run` (zero-setup demo) and `make test` (PostgreSQL + Redis + Chromium).
SHELL := /bin/sh
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

export RINGFENCE_TEST_DATABASE_URL ?= postgres://ringfence:ringfence@127.0.0.1:5432/ringfence
export RINGFENCE_TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: run test test-fast test-reliability bench venv clean check

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || "$$(sh scripts/find-python)" -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

run: $(STAMP)
	@$(PY) scripts/devserver.py

# Two pytest-xdist processes, a test file each at a time, each with its own test database
# (<name>_gw0, _gw1) and Redis database (tests/testenv.py); PYTEST_ARGS="-n 0" runs one.
test: $(STAMP)
	@sh scripts/ensure-services
	@$(PY) -m pytest -m "not reliability" -n 2 --dist loadfile $(PYTEST_ARGS)

# Fault injection on private PostgreSQL/Redis the tests start themselves (tests/reliability);
# pytest's exit code 5 ("no tests selected", e.g. a PYTEST_ARGS filter) is not a failure.
test-reliability: $(STAMP)
	@sh scripts/ensure-services
	@$(PY) -m pytest -m reliability $(PYTEST_ARGS) || [ $$? -eq 5 ]

bench: $(STAMP)
	@sh scripts/ensure-services
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

# Lint, the rooms' import contracts (pyproject's [tool.importlinter]), Django's checks, no model
# change without its migration.
check: $(STAMP)
	@$(PY) -m ruff check .
	@$(VENV)/bin/lint-imports --no-cache
	@var=$$(mktemp -d) && export RINGFENCE_VAR_DIR=$$var && $(PY) -m core.zero_setup && $(PY) manage.py check \
		&& $(PY) manage.py makemigrations --check --dry-run >/dev/null; rc=$$?; rm -rf $$var; exit $$rc

clean:
	rm -rf $(VENV) var
