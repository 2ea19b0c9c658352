# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast data conformance hub-conformance tfmot-venv step-overhead clean

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,plots,litert,hub]"
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

# The tensorflow-model-optimization peer for benchmarks/step_overhead.py, in its own virtual environment
# (it needs tf_keras, which must not share an environment with Keras 3 training code).
TFMOT_VENV := benchmarks/.venv-tfmot
$(TFMOT_VENV)/.installed:
	$(PY) -m venv $(TFMOT_VENV)
	$(TFMOT_VENV)/bin/pip install -q "tensorflow-model-optimization==0.8.1" "tf-keras==2.21.*" "tensorflow-cpu==2.21.*"
	touch $@

tfmot-venv: $(TFMOT_VENV)/.installed

step-overhead: $(STAMP) tfmot-venv
	$(BIN)/python benchmarks/step_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info
