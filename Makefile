# Everything the project needs is installed by these targets into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck pytest chaos bench clean

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

test: lint typecheck pytest

# A longer chaos run than the one inside `make test`: make chaos SECONDS=600
SECONDS ?= 300
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --seconds $(SECONDS)

# Starts its own Valkey servers and daemons; not part of `make test`. ARGS=--quick: < 1 min.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# Tools of the network-fault tests (tests/netns.py): nft and tc, installed as root if missing.
.PHONY: netfault-tools
pytest: netfault-tools
netfault-tools:
	@command -v nft >/dev/null && command -v tc >/dev/null || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nftables iproute2; }

# The chaos run under network faults (tests/netchaos.py), each scenario SECONDS long.
.PHONY: chaos-net
chaos-net: $(STAMP) netfault-tools
	$(BIN)/python -m tests.netchaos --seconds $(SECONDS) $(ARGS)
