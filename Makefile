# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# Both bootstrap .venv (Python 3.11) idempotently; the stamp changes when pyproject.toml does.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# torchtune's trace needs torchao < 0.16, which PEFT 0.21.2 refuses to import beside: a second venv that sees .venv's
# packages (a .pth) and adds only the 'torchtune' extra (docs/frameworks.md)
TT_VENV := .venv-torchtune
TT_STAMP := $(TT_VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# pytest-xdist workers (whole test files per worker: module fixtures build once); CI's machine has 2 cores
TEST_WORKERS ?= 2
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint bench venv torchtune-venv clean browser postgres

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip setuptools
	# torch first and pinned: 2.13.0 resolves to the local CPU wheel here, never a multi-GB CUDA build.
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[step,trl,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

torchtune-venv: $(TT_STAMP)

$(TT_STAMP): $(STAMP)
	test -x $(TT_VENV)/bin/python || $(PYTHON) -m venv $(TT_VENV)
	$(BIN)/python -c "import site; print(site.getsitepackages()[0])" > \
		$$($(TT_VENV)/bin/python -c "import site; print(site.getsitepackages()[0])")/peft_planner_main_venv.pth
	$(TT_VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[torchtune]'
	rm -f $(TT_VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/uvicorn app.main:app --host $(HOST) --port $(PORT) --timeout-graceful-shutdown 10

lint: $(STAMP)
	$(BIN)/ruff check app tests bench

# Debian's chromium for tests/browser (Playwright drives it; no `playwright install`). CI runs as root here.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# Debian's PostgreSQL server binaries for tests/test_fleet.py (the tests start their own cluster; the
# package's default cluster service is not needed).
postgres:
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq postgresql)

test: $(STAMP) $(TT_STAMP) lint browser postgres
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile
	$(TT_VENV)/bin/python -m pytest -n $(TEST_WORKERS) tests/test_torchtune.py

bench: $(STAMP)
	$(BIN)/python bench/estimate_latency.py

clean:
	rm -rf $(VENV) $(TT_VENV) .pytest_cache .ruff_cache
