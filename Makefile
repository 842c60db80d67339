# Two commands set up a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo demo-pool test install lint schema bench clean cluster-up cluster-down

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

## Run the demo campaign (productions/mocks.yaml) to completion on the local backend (no Slurm needed).
demo: $(VENV)/.installed
	$(BIN)/reconcile watch mocks --until-done --interval 2
	$(BIN)/reconcile status mocks

## The same campaign in pool mode: its tasks run inside two worker jobs instead of job arrays (outputs in work/pool/).
POOL_DEMO = --set execution.mode=pool --set execution.pool.workers=2 --set execution.pool.idle_seconds=10 --set outputs.base_path=work/pool
demo-pool: $(VENV)/.installed
	$(BIN)/reconcile watch mocks $(POOL_DEMO) --until-done --interval 2
	$(BIN)/reconcile status mocks $(POOL_DEMO)

## Install the test dependencies and run the whole suite (starts a Slurm test cluster when root).
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

## ruff, mypy, and the import contract (core is pure, imports run cli -> session -> engine -> core).
lint: $(VENV)/.installed-test
	$(BIN)/ruff check reconciler tests benchmarks
	$(BIN)/mypy reconciler
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_architecture.py

schema: $(VENV)/.installed
	$(BIN)/reconcile schema

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_pass.py

cluster-up:
	scripts/slurm-test-cluster up

cluster-down:
	scripts/slurm-test-cluster down

clean:
	rm -rf $(VENV) work .pytest_cache .hypothesis
