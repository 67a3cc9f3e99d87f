# Everything the project needs is installed by these targets into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck pytest browser chaos bench clean

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

pytest: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The console's browser test (tests/test_console_browser.py) drives Debian's Chromium.
# As root, install it when missing; otherwise that test fails saying what is missing.
browser:
	@if [ ! -x /usr/bin/chromedriver ] || [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update && apt-get install -y chromium chromium-driver; \
	  else \
	    echo "make browser: chromium and chromium-driver are missing (as root: apt-get install -y chromium chromium-driver)"; \
	  fi; \
	fi

test: lint typecheck browser pytest

# A longer chaos run than the one inside `make test`: make chaos SECONDS=600
SECONDS ?= 300
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --seconds $(SECONDS)

# Starts its own Valkey servers and daemons; not part of `make test`. ARGS=--quick: < 1 min.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
