# One venv, made from the project's own files. `make test` and `make demo` work on a fresh machine
# with Python 3.10+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-ha test-acl check lint types demo bench chaos mutants clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The topology combinations beyond `make test`'s subset: contract, lease, race, zombie, fleet e2e,
# CLI and replication tests on Cluster, Sentinel and TLS (docs/topologies.md).
test-ha: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m ha $(PYTEST_ARGS)

# `make test`'s selection (without the chaos scenarios, which start their own servers) with every
# fixture handing out URLs of a user restricted to burr_dist's ACL rules; a test fails if the
# rules refused any command (ACL LOG).
test-acl: $(STAMP)
	BURR_DIST_TEST_ACL=1 $(BIN)/python -m pytest -q -p no:cacheprovider --ignore=tests/chaos $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check burr_dist tests bench examples
	$(BIN)/ruff format --check burr_dist tests bench examples

types: $(STAMP)
	$(BIN)/mypy

check: lint types test

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python bench/steps.py

chaos: $(STAMP)
	CHAOS_SIZE=large $(BIN)/python -m pytest -q -p no:cacheprovider tests/chaos -m chaos

# Break one Lua script at a time (in a temporary copy) and check the suite notices each time.
mutants: $(STAMP)
	$(BIN)/python -m tests.chaos.mutants

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
