# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast data conformance hub-conformance clean

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,plots,hub]"
	touch $(STAMP)

# Real data: Debian's dataset-fashion-mnist where root and apt are available; the loader also takes a path.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || \
	  echo "note: could not install dataset-fashion-mnist; demo needs it (or MORPHSPARSE_FASHION_MNIST=path)"; \
	fi

demo: $(STAMP) data
	$(BIN)/python examples/demo.py

test: $(STAMP) data
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -rs

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -m "not slow"

conformance: $(STAMP)
	$(BIN)/python benchmarks/conformance.py

hub-conformance: $(STAMP)
	$(BIN)/python benchmarks/hub_conformance.py

clean:
	rm -rf $(VENV) build *.egg-info
