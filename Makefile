# Everything the project needs is installed by these targets into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck security pytest browser chaos bench clean tls-server

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

pytest: $(STAMP) tls-server
	$(BIN)/pytest -q $(PYTEST_ARGS)

# tests/test_tls.py needs a Redis built with TLS, which the bundled valkey-server is not:
# Debian's redis-tools (its redis-check-rdb is redis-server under another name), with apt
# as root. Otherwise that test fails with one line saying so.
APT_REDIS = DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-tools
tls-server:
	@command -v redis-check-rdb >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { $(APT_REDIS) || { apt-get update -q && $(APT_REDIS); }; } >/dev/null 2>&1; } || \
	  echo "tls-server: cannot install Debian's redis-tools (needs root and apt-get)"

# The console's browser test (tests/test_console_browser.py) drives Debian's Chromium and
# chromedriver, with apt as root. Otherwise that test fails with one line saying so.
APT_BROWSER = DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
browser:
	@{ [ -x /usr/bin/chromedriver ] && [ -x /usr/bin/chromium ]; } || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { $(APT_BROWSER) || { apt-get update -q && $(APT_BROWSER); }; } >/dev/null 2>&1; } || \
	  echo "browser: cannot install Debian's chromium and chromium-driver (needs root and apt-get)"

test: lint typecheck security browser pytest

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
