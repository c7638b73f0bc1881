# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# Both bootstrap .venv (Python 3.11) idempotently; the stamp changes when pyproject.toml does.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint bench venv clean browser postgres

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip setuptools
	# torch first and pinned: 2.13.0 resolves to the local CPU wheel here, never a multi-GB CUDA build.
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[step,trl,torchtune,dev]'
	rm -f $(VENV)/.installed-*
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

test: $(STAMP) lint browser postgres
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/estimate_latency.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
