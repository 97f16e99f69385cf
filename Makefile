# make demo: set up, generate the synthetic data, train a detector with W&B offline, print the mAP
# make lint: ruff (style, imports, likely bugs) over the package and tests, mypy over the package
# make test: set up, lint, and run the whole test suite, then its core flows on lightning.pytorch (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo lint test bench
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) examples/train_shapes.py

lint: setup
	$(PY) -m ruff check mmdet_lightning tests
	$(PY) -m mypy mmdet_lightning

test: setup lint
	$(PY) -m pytest
	$(PY) -m pytest -p tests.helpers.lightning_first -m both_packages

bench: setup
	$(PY) benchmarks/train_overhead.py
