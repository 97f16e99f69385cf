# make demo: set up, generate the synthetic data, train a detector with W&B offline, print the mAP
# make lint: ruff (style, imports, likely bugs) over the package, tests, benchmarks and tools, mypy over the package
# make test: set up, lint, and run the whole test suite, then its core flows on lightning.pytorch (what CI runs)
# make test-compiled-ops: in a second environment with mmcv's compiled ops (built from source, about 10 minutes
#   the first time), compare mmdet_lightning's PyTorch ops with the compiled kernels (CI runs it after make test)
VENV ?= .venv
COMPILED_VENV ?= .venv-compiled
PY := $(VENV)/bin/python

.PHONY: setup demo lint test test-compiled-ops bench
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) examples/train_shapes.py

lint: setup
	$(PY) -m ruff check mmdet_lightning tests benchmarks tools
	$(PY) -m mypy mmdet_lightning

test: setup lint
	$(PY) -m pytest
	$(PY) -m pytest -p tests.helpers.lightning_first -m both_packages

test-compiled-ops:
	@VENV=$(COMPILED_VENV) MMCV_OPS=compiled bash scripts/setup.sh
	$(COMPILED_VENV)/bin/python -m pytest tests/test_mmcv_ext.py tests/test_runner_equivalence.py

bench: setup
	$(PY) benchmarks/train_overhead.py
