# corral's verbs. `make` (or `make help`) lists them.
#
# Every verb does its own set-up (venv, Docker, test image) through the same
# idempotent scripts, so `make demo` and `make test` work on a fresh machine and
# are fast when everything is already there.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

VENV ?= .venv
export CORRAL_VENV := $(abspath $(VENV))
PY := $(CORRAL_VENV)/bin/python
# Tools (ruff, mypy, pytest, protoc plugins, corral) come from the venv.
export PATH := $(CORRAL_VENV)/bin:$(PATH)
export CORRAL_LOG_DIR ?= /tmp/corral-logs

# pytest: `-n auto` uses every core, capped at PYTEST_MAX_WORKERS; whole files go
# to one worker (--dist loadfile) so that a file's agents and fixtures stay together.
PYTEST_WORKERS ?= auto
PYTEST_MAX_WORKERS ?= 4
PYTEST_ARGS ?=
PYTEST := $(PY) -m pytest -n $(PYTEST_WORKERS) --maxprocesses=$(PYTEST_MAX_WORKERS) --dist loadfile -ra

# mypy sees the package as it is installed (corral.server, corral.scheduler...),
# through a tree of symlinks built from pyproject's package-dir mapping.
TYPECHECK_DIR := build/typecheck

.PHONY: help setup docker image proto test test-unit test-integration lint typecheck lint-imports typecheck-tree fmt demo bench clean distclean

help: ## list the verbs (default)
	@echo "corral: make <verb>"
	@grep -E '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([^:]+):.*## (.*)$$/\1\t\2/' | \
		while IFS=$$'\t' read -r verb text; do printf '  %-17s %s\n' "$$verb" "$$text"; done
	@echo "Variables: PYTEST_ARGS='-k name -x', PYTEST_WORKERS=auto|N, CORRAL_LOG_DIR=$(CORRAL_LOG_DIR)"

setup: ## create .venv and install corral editable with the dev extras
	@scripts/setup.sh

docker: ## install and start Docker when possible (root + apt); else say why not
	@scripts/ensure-docker.sh

image: docker ## build the local test image corral-busybox:latest (no registry)
	@if timeout 20 docker info >/dev/null 2>&1; then \
		scripts/build-image.sh; \
	else \
		echo "image: no Docker engine answers; the test image is not built (Docker tests will skip)"; \
	fi

proto: setup ## regenerate proto/corral_pb2*.py(i) from proto/corral.proto
	@scripts/gen-proto.sh
	@echo "proto: regenerated proto/corral_pb2.py, corral_pb2.pyi, corral_pb2_grpc.py, corral_pb2_grpc.pyi"

test: setup image ## run the whole suite (unit + integration + e2e) in parallel
	$(PYTEST) $(PYTEST_ARGS)

test-unit: setup ## run the unit tests only (no Docker, no processes)
	$(PYTEST) tests/unit $(PYTEST_ARGS)

test-integration: setup image ## run the integration and e2e tests only
	$(PYTEST) tests/integration tests/e2e $(PYTEST_ARGS)

lint: setup ## ruff check, ruff format --check, mypy, import walls (all run; fails if any fails)
	@status=0; \
	echo "lint: ruff check ."; $(PY) -m ruff check . || status=1; \
	echo "lint: ruff format --check ."; $(PY) -m ruff format --check . || status=1; \
	$(MAKE) typecheck || status=1; \
	$(MAKE) lint-imports || status=1; \
	exit $$status

define TYPECHECK_TREE_PY
import pathlib, shutil, tomllib
root = pathlib.Path.cwd()
out = root / "$(TYPECHECK_DIR)"
shutil.rmtree(out, ignore_errors=True)
mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
top = out / "corral"
top.mkdir(parents=True)
subpackages = {name.split(".")[1] for name in mapping if name.count(".") == 1}
for entry in (root / mapping.get("corral", "corral")).iterdir():
    if entry.name != "__pycache__" and entry.name.split(".")[0] not in subpackages:
        (top / entry.name).symlink_to(entry)
for name, folder in sorted(mapping.items()):
    link = out.joinpath(*name.split("."))
    if name != "corral" and not link.exists():
        link.symlink_to(root / folder)
endef
export TYPECHECK_TREE_PY

# The symlink tree (mypy and import-linter read the package through it).
typecheck-tree: setup
	@$(PY) -c "$$TYPECHECK_TREE_PY"

typecheck: setup typecheck-tree ## mypy on the corral package (generated proto code excluded)
	@echo "lint: mypy -p corral"
	@dirs=$$(cd $(TYPECHECK_DIR)/corral && find . -maxdepth 1 -type l -xtype d -printf '%f|' | sed 's/|$$//'); \
	cd $(TYPECHECK_DIR) && $(PY) -m mypy --config-file $(CURDIR)/pyproject.toml --cache-dir $(CURDIR)/build/mypy-cache -p corral \
		| sed -E "s#^corral/($$dirs)/#\1/#"

# import-linter runs in the tree, which it puts first on sys.path (it adds the
# working directory), so that corral.server etc. are found as installed.
lint-imports: setup typecheck-tree ## import-linter: the import walls (contracts in pyproject.toml)
	@echo "lint: lint-imports (contracts: pyproject.toml [tool.importlinter])"
	@cd $(TYPECHECK_DIR) && $(CORRAL_VENV)/bin/lint-imports --no-logo \
		--cache-dir $(CURDIR)/build/import-linter-cache $(CURDIR)/pyproject.toml

fmt: setup ## format the code (ruff format) and apply ruff's safe fixes
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

demo: setup image ## start a dev agent, run examples/hello.hcl, show it answering, stop
	@scripts/demo.sh

bench: setup image ## run the benchmarks in bench/ (JSON on stdout; see docs/BENCHMARKS.md)
	@for b in bench/*.py; do echo "bench: $$b" >&2; $(PY) "$$b"; done

clean: ## remove caches, build output and logs (keeps .venv)
	rm -rf build .pytest_cache .mypy_cache .ruff_cache .hypothesis "$(CORRAL_LOG_DIR)"
	find . -path ./.venv -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean ## clean, and remove .venv and the egg-info
	rm -rf "$(CORRAL_VENV)" corral.egg-info
