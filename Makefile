# The two commands of the README: `make demo` and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: deps demo test test-unit chaos lint bench clean

$(BIN)/shardhouse: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,local]'
	touch $@

deps: $(BIN)/shardhouse
	scripts/install-deps.sh
	scripts/install-kcl.sh

demo: deps
	$(BIN)/shardhouse demo

test: deps lint
	$(BIN)/pytest -q -n 2 --dist loadgroup

test-unit: deps
	$(BIN)/pytest -q tests/unit

# The exactly-once acceptance test alone (also part of `make test`); run it three times in a row
# with `make chaos CHAOS_RUNS=3`.
CHAOS_RUNS ?= 1
chaos: deps
	for i in $$(seq $(CHAOS_RUNS)); do $(BIN)/pytest -q -m chaos || exit 1; done

lint: $(BIN)/shardhouse
	$(BIN)/ruff check pipeline workers inserter schemas tests benchmarks
	$(BIN)/ruff format --check -q pipeline workers inserter schemas tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/cfn-lint deploy/*.yaml

clean:
	rm -rf $(VENV) .shardhouse .mypy_cache .ruff_cache .pytest_cache
