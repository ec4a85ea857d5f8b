# Embedded defaults: everything (Dagster SQLite storage, MLflow store, data) under .mlsd/ in this checkout.
VENV ?= .venv
PYTHON ?= python3
export MLSD_HOME ?= $(CURDIR)/.mlsd
export DAGSTER_HOME ?= $(MLSD_HOME)/dagster
BIN := $(VENV)/bin

.PHONY: system setup dagster-home engine pipeline dev test test-all lint

# System packages + Docker engine (root installs them; anyone else is told, within seconds, what to run).
system:
	docker/engine/setup-system.sh

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The instance config travels with the repo; DAGSTER_HOME holds the SQLite files next to it. The storage is
# created here, once, before a webserver, daemon or code server can race to create it (alembic: two heads).
dagster-home: setup
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster instance migrate >/dev/null

# The last two assets build and run a real image: start a local engine + offline base image when missing.
engine:
	docker/engine/prepare.sh

# `system` first: a machine that cannot run the last steps stops before the venv and the training.
pipeline: system setup dagster-home
	$(BIN)/python -m mlsd_assets pipeline $(PIPELINE_ARGS)

# Run workers inherit jemalloc (when installed) from here: CPU training steps stop page-faulting.
dev: setup dagster-home
	$(BIN)/python -m mlsd_assets.core.platform.allocator $(BIN)/dagster dev -w workspace.yaml

test: setup
	$(BIN)/pytest -m "not slow"

test-all: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check mlsd_assets mlsd_assets_tests benchmarks
	$(BIN)/ruff format --check mlsd_assets mlsd_assets_tests benchmarks
