# The two commands of the README: `make demo` and `make test`. Each does its own
# set-up (a .venv with the CPU build of torch, the package, FashionMNIST) and is
# safe to re-run.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test setup data lint bench clean

demo: setup data
	$(VENV)/bin/ddcal run --preset demo

test: setup data lint
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check ddcal tests examples benchmarks
	$(VENV)/bin/ruff format --check ddcal tests examples benchmarks
	$(VENV)/bin/mypy ddcal

setup: $(VENV)/.installed

# torch first and pinned: a bare `torch` requirement on a machine without one
# pulls a multi-GB CUDA build; 2.13.0 here is the local CPU build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

data:
	@if [ -n "$$DDCAL_DATA" ] || [ -f $(FASHION_MNIST) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "FashionMNIST not found: install it with 'sudo apt-get install dataset-fashion-mnist'" \
			"or put its IDX files in a folder and set DDCAL_DATA to it."; \
	fi

bench: setup data
	$(PY) benchmarks/bench_metrics.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
