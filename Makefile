# make demo: set up, generate the synthetic data, train a detector with W&B offline, print the mAP
# make test: set up and run the whole test suite, then its core flows on lightning.pytorch (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) examples/train_shapes.py

test: setup
	$(PY) -m pytest
	$(PY) -m pytest -p tests.helpers.lightning_first -m both_packages

bench: setup
	$(PY) benchmarks/train_overhead.py
