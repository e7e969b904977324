# One venv, made from the project's own files. `make test` and `make demo` work on a fresh machine
# with Python 3.10+ and make. `.venv` resolves the newest redis-py pyproject.toml allows (what
# `pip install burr_dist` gives a user); two more venvs, made only when their targets run:
#   .venv-bench   the benchmark peers (arq, rq); arq pins redis<6, so they stay out of .venv
#   .venv-oldest  the oldest redis-py we support (pyproject: redis>=5.3,<9), for `make test-oldest`
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
OLDEST_VENV := .venv-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.installed
OLDEST_REDIS := 5.3.*
# What differs between redis-py versions and what we rely on: the protocol (5.3 speaks RESP2,
# 8 negotiates RESP3: other reply types from scripts read on a raw pooled connection), pipelines
# (retry refill, MULTI), the client's own retries (none in 5.3, 3+ by default since 6), the CLI.
OLDEST_TESTS := tests/test_persister_contract.py tests/test_lease.py tests/test_lost_reply.py \
	tests/test_pipeline_retry.py tests/test_claims.py tests/test_argument_order.py tests/test_cli.py \
	tests/test_fleet_e2e.py

.PHONY: browser test test-oldest test-ha test-acl check lint types demo docs bench bench-state bench-env bench-fleet chaos chaos-ha mutants clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --upgrade-strategy eager -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Debian's chromium for the UI test (tests/test_ui.py skips without it); playwright's own browser
# download does not work here (no network access beyond the package registries).
browser:
	test -x /usr/bin/chromium || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

$(OLDEST_STAMP): pyproject.toml
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install -q -e '.[dev]' 'redis[hiredis]==$(OLDEST_REDIS)'
	touch $(OLDEST_STAMP)

# The tests that touch redis-py's behaviour, on the oldest redis-py we support.
test-oldest: $(OLDEST_STAMP)
	$(OLDEST_VENV)/bin/python -c 'import redis; print("redis-py", redis.__version__)'
	$(OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider $(OLDEST_TESTS) $(PYTEST_ARGS)

# The topology combinations beyond `make test`'s subset: contract, lease, race, zombie, fleet e2e,
# CLI and replication tests on Cluster, Sentinel and TLS (docs/guides/topologies.md).
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

# The documentation site (mkdocs.yml, docs/): a broken link, a missing page or an API name that
# no longer exists fails the build. NO_MKDOCS_2_WARNING silences the theme's banner.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Steps per second: in .venv, on the redis-py users get (it needs no benchmark peer).
bench: $(STAMP)
	$(BIN)/python bench/steps.py

# Growing state: Redis memory and step latency, delta snapshots against full ones and Burr's own.
bench-state: $(STAMP)
	$(BIN)/python bench/state_growth.py

$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[bench]'
	$(BENCH_VENV)/bin/python -c 'import arq, rq, redis, bench.fleet_peers; print("bench env: redis-py", redis.__version__)'
	touch $(BENCH_STAMP)

bench-env: $(BENCH_STAMP)

# burr_dist against arq + Burr and RQ + Burr on the same apps (bench/fleet.py): burr_dist's
# workers in .venv, the peers' in .venv-bench, each on the redis-py its users get.
bench-fleet: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/fleet.py

chaos: $(STAMP)
	CHAOS_SIZE=large $(BIN)/python -m pytest -q -p no:cacheprovider tests/chaos -m chaos

# The failover scenarios alone at full size, with their table.
chaos-ha: $(STAMP)
	CHAOS_SIZE=large $(BIN)/python -m pytest -q -p no:cacheprovider tests/chaos/test_failover.py -m chaos

# Break one Lua script at a time (in a temporary copy) and check the suite notices each time.
mutants: $(STAMP)
	$(BIN)/python -m tests.chaos.mutants

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(OLDEST_VENV) build site *.egg-info .mypy_cache .ruff_cache
