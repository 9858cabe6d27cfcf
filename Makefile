# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
# uv is bootstrapped with pip when it is missing; everything else comes from uv.lock.

SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")

.PHONY: help uv venv demo doctor test lint services

help:
	@echo "make demo    run the reference workload (stackwatch demo)"
	@echo "make test    install what the tests need and run them"
	@echo "make lint    ruff + mypy"

uv:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 \
	  || $(PYTHON) -m pip install --quiet --disable-pip-version-check uv

venv: uv
	$(UV) sync --all-extras --frozen

demo: venv
	$(UV) run --frozen stackwatch demo $(ARGS)

doctor: venv
	$(UV) run --frozen stackwatch doctor $(ARGS)

services:
	bash .ci/services.sh

test: venv services
	$(UV) run --frozen pytest $(ARGS)

lint: venv
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy
