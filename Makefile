# Set-up and entry points. `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test compat bench bench-quick

# torch first: the CPU wheel on these machines; a bare `torch` requirement would pull a multi-GB CUDA build.
install:
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[test]"

demo: install
	$(PYTHON) demo/run_demo.py

test: install
	$(PYTHON) -m pytest -q tests

# The declared lower bounds (compat/floors.txt) in a second environment that shadows the newest releases: checkpoints
# saved with either set load as remote code with identical logits in the other, and train.py trains on the floors.
COMPAT_DIR ?= /tmp/mmemotion-compat
compat: install
	rm -rf $(COMPAT_DIR) && $(PYTHON) -m venv --system-site-packages $(COMPAT_DIR)/venv
	$(COMPAT_DIR)/venv/bin/python -m pip install -q -r compat/floors.txt
	$(PYTHON) compat/round_trip.py save $(COMPAT_DIR)/saved-with-newest
	$(COMPAT_DIR)/venv/bin/python compat/round_trip.py load $(COMPAT_DIR)/saved-with-newest
	$(COMPAT_DIR)/venv/bin/python compat/round_trip.py save $(COMPAT_DIR)/saved-with-floors
	$(PYTHON) compat/round_trip.py load $(COMPAT_DIR)/saved-with-floors
	$(COMPAT_DIR)/venv/bin/python train.py --task emotion --config_name tiny --train_file tests/fixtures/ecf_sample.json \
		--validation_file tests/fixtures/ecf_sample.json --do_train --do_eval --max_steps 4 --log_level warning \
		--output_dir $(COMPAT_DIR)/train-on-floors
	test -s $(COMPAT_DIR)/train-on-floors/model.safetensors && test -s $(COMPAT_DIR)/train-on-floors/eval_results.json

bench: install
	$(PYTHON) benchmarks/run.py

bench-quick: install
	$(PYTHON) benchmarks/run.py --quick
