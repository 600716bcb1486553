# Self-documenting Makefile: `make help` lists the targets with their `##` comments.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INPUT ?= sample_data/images sample_data/data
OUTPUT ?= out
URLS ?=
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install process demo-download test browser lint bench bench-peers clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## Create .venv (if missing) and install the package
	@echo "installed into $(VENV)"

process: $(VENV)/.installed ## Process INPUT="dir1 dir2" (default sample_data/images sample_data/data) [URLS=list.txt] into OUTPUT=out
	@$(PY) -m compileall -q app pipeline stages  # bytecode once, not in every worker (PYTHONDONTWRITEBYTECODE)
	$(PY) -m pipeline process $(INPUT) $(if $(URLS),--urls $(URLS)) --output $(OUTPUT) $(ARGS)

demo-download: $(VENV)/.installed ## Serve sample_data/images on 127.0.0.1 and process it by URL into out/download
	$(PY) -m app.demo_download $(if $(filter-out out,$(OUTPUT)),$(OUTPUT),out/download)

test: $(VENV)/.installed-dev browser ## Install dev extras (if missing) and run the whole test suite
	$(PY) -m pytest $(ARGS)

# The report test renders out/report.html in headless Chromium. Installed with apt when we are
# root and it is missing; if that is impossible the one browser test is skipped with a message.
browser:
	@command -v chromium >/dev/null 2>&1 || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium not installed: the browser test will be skipped"

lint: $(VENV)/.installed-dev ## ruff + mypy over app/, pipeline/ and stages/, and the layers' import contracts
	$(PY) -m ruff check app pipeline stages tests bench sample_data
	$(PY) -m ruff format --check app pipeline stages tests bench sample_data
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-cache --no-logo
	$(VENV)/bin/deptry .

bench: $(VENV)/.installed-dev ## Run the benchmarks and print their tables (asserts nothing)
	@$(PY) -m compileall -q app pipeline stages bench
	$(PY) -m bench $(ARGS)

PEERS_VENV := bench/.peers-venv

bench-peers: ## Install img2dataset into its own venv, bench/.peers-venv (never into .venv), for `bench datasets`
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -r bench/requirements-img2dataset.txt

clean: ## Remove outputs and caches (keeps .venv)
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
