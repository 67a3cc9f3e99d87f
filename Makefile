# Everything the project needs is installed by these targets into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck security pytest chaos bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/lifecycled run $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# What ships (daemon/): no findings, or a `# nosec <test>` with its reason on the line.
security: $(STAMP)
	$(BIN)/bandit -q -r daemon

pytest: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint typecheck security pytest

# A longer chaos run than the one inside `make test`: make chaos SECONDS=600
SECONDS ?= 300
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --seconds $(SECONDS)

# Starts its own Valkey servers and daemons; not part of `make test`. ARGS=--quick: < 1 min.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
