# The README's first two commands: `make run` (main job on the embedded default) and
# `make test`. Both create .venv and install everything on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Project-local state: Prefect's ephemeral API database, MLflow's sqlite store, the cache.
export PREFECT_HOME ?= $(CURDIR)/.masters/prefect
# The ephemeral Prefect API migrates its database on first use; 20 s is too short on 2 cores.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test test-e2e test-loaded lint bootstrap bench bench-quick ui clean

install: $(VENV)/.installed

# torch + torchvision first and pinned together: a bare requirement can pull another build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# The embedded default: shipped tiny models, synthetic data (configs/embedded.yaml).
CONFIG ?= configs/embedded.yaml
run: install
	mkdir -p $(PREFECT_HOME)
	$(BIN)/masters run --config $(CONFIG) $(ARGS)

PYTEST_ARGS ?= -q
test: install
	mkdir -p $(PREFECT_HOME)
	$(BIN)/pytest $(PYTEST_ARGS)

# Only the end-to-end test (real Prefect server + worker, MLflow server, S3): docs/deployments.md
test-e2e: install
	mkdir -p $(PREFECT_HOME)
	$(BIN)/pytest -m e2e $(PYTEST_ARGS)

# tests/reliability REPEAT times beside BUSY busy loops (flakiness under load): docs/reliability.md
test-loaded: install
	mkdir -p $(PREFECT_HOME)
	REPEAT=$(or $(REPEAT),10) BUSY=$(or $(BUSY),2) tests/reliability/under_load.sh

lint: install
	$(BIN)/ruff check .

bootstrap: install
	$(BIN)/masters bootstrap $(ARGS)

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///.masters/mlflow.db --port 5000

clean:
	rm -rf .masters

# Benchmarks -> BENCHMARKS.md (quality rows: about BENCH_WORKERS=2 processes, 1 thread each).
bench: install
	$(BIN)/python -m benchmarks.run
# Reduced rows and data (<= 15 min); written beside the full results, not over them.
bench-quick: install
	$(BIN)/python -m benchmarks.run --quick --out .masters/bench/BENCHMARKS-quick.md \
		--json .masters/bench/results-quick.json
