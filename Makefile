# The two commands of the README: `make demo` and `make test`. Each does its own
# set-up (a .venv with the CPU build of torch, the package, FashionMNIST) and is
# safe to re-run.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test setup data lint docs dist bench bench-setup clean

demo: setup data
	$(VENV)/bin/ddcal run --preset demo

test: setup data lint docs
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check ddcal tests examples benchmarks tools
	$(VENV)/bin/ruff format --check ddcal tests examples benchmarks tools
	$(VENV)/bin/mypy ddcal

# The documentation site in site/ (open site/index.html); --strict: a broken link,
# cross-reference or docstring entry fails the build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The wheel and the sdist in dist/, checked as PyPI would.
dist: setup
	rm -rf dist
	$(PY) -m build --outdir dist
	$(VENV)/bin/twine check --strict dist/*

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

# The CPU rows of benchmarks/README.md, in their own environment: the peers
# (torchmetrics, netcal) are installed there only. REFERENCES names a folder with
# checkouts of VICO-UoE/DatasetCondensation and GeorgeCazenavette/mtt-distillation
# (as DatasetCondensation/ and mtt-distillation/) for the side-by-side rows.
BENCH_VENV := .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
REFERENCES ?=
DC_REFERENCE = $(if $(REFERENCES),--reference $(REFERENCES)/DatasetCondensation)
DISTILL_REFERENCES = $(if $(REFERENCES),--reference-dc $(REFERENCES)/DatasetCondensation \
	--reference-mtt $(REFERENCES)/mtt-distillation)

bench-setup: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(BENCH_PY) -m pip install --quiet -e '.[bench]'
	touch $@

bench: bench-setup data
	$(BENCH_PY) benchmarks/bench_metrics.py
	$(BENCH_PY) benchmarks/bench_temperature.py
	$(BENCH_PY) benchmarks/bench_train.py $(DC_REFERENCE)
	$(BENCH_PY) benchmarks/bench_distill.py --methods dm mtt $(DISTILL_REFERENCES)

clean:
	rm -rf $(VENV) $(BENCH_VENV) build dist site *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
