# Set-up and entry points. `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test bench bench-quick

# torch first: the CPU wheel on these machines; a bare `torch` requirement would pull a multi-GB CUDA build.
install:
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[test]"

demo: install
	$(PYTHON) demo/run_demo.py

test: install
	$(PYTHON) -m pytest -q tests

bench: install
	$(PYTHON) benchmarks/run.py

bench-quick: install
	$(PYTHON) benchmarks/run.py --quick
