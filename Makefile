# Fairway — make setup | run | test | bench | protos | lint
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
PYTHON ?= python3
# uv on PATH, else the one `make setup` installs with pip (a machine with only Python and make).
UV ?= $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
PY := .venv/bin/python
PROTOS := $(shell find protos -name '*.proto' | sort)

.PHONY: setup run test bench bench-e2e protos lint typecheck clean

setup:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check uv \
		|| $(PYTHON) -m pip install --quiet --disable-pip-version-check --user uv
	$(UV) sync --frozen --extra local
	@# gen/ is committed; generate it only when absent (tests/test_protos.py checks it matches protos/).
	@test -f gen/fairway/scheduler/v1/scheduler_pb2.py || $(MAKE) --no-print-directory protos

protos:
	rm -rf gen/fairway gen/envoy && mkdir -p gen/fairway
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen --mypy_out=gen --mypy_grpc_out=gen $(PROTOS)
	find gen -mindepth 1 -type d -exec touch {}/__init__.py \;

run: setup
	.venv/bin/fairway up

test: setup
	.venv/bin/ruff check services tests bench
	.venv/bin/mypy
	.venv/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench $(BENCH_ARGS)

bench-e2e: setup
	$(PY) -m bench e2e_bench

lint:
	.venv/bin/ruff check services tests bench
	.venv/bin/ruff format --check services tests bench

typecheck:
	.venv/bin/mypy

clean:
	rm -rf .venv .fairway .pytest_cache .mypy_cache
