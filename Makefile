# `make demo`: set up .venv (CPU torch) and fine-tune the embedded tiny BLIP-2 on the embedded food
#              photos, offline, then print alt text for a few test photos beside their references.
# `make test`: the test suite (what CI runs); on a GPU host it includes the GPU tests.
# `make test-gpu`: only the GPU tests (tests/test_gpu.py, marker `gpu`); an error on a machine without CUDA.
# `make gpu-check`: on a machine with one NVIDIA GPU, validate what needs one, in 300 s budgets (calls of <= 6 min)
#              -> benchmarks/results/gpu-<gpu name>/ (docs/gpu-validation.md). It installs nothing: the
#              packages must import with $(GPU_PYTHON) (on the lent machine, the carried wheels on PYTHONPATH).
# `make gpu-check-dry`: the same steps on this CPU with the tiny twins (~1.5-2.5 min) -> benchmarks/results/gpu-dry-cpu/
# `make gpu-wheels`: download/build here the wheels the lent GPU machine lacks -> .whl/ (git-ignored).
# `make test-gpu-machine-mix`: the whole suite again in .venv-gpu-machine-mix, the lent GPU machine's Python and
#              packages (requirements-gpu-machine.txt) on this CPU; CI runs it after `make test`.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# The interpreter the venv is made with.
BASE_PYTHON ?= python3
# The CPU build of torch, unless this machine has an NVIDIA driver (then PyPI's CUDA build, for the GPU tests).
REQUIREMENTS ?= $(if $(shell command -v nvidia-smi),requirements.txt,requirements-cpu.txt)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# The GPU machine's own Python (no venv there); override: make gpu-check GPU_PYTHON=...
GPU_PYTHON ?= python3
GPU_CHECK_FLAGS ?=

.PHONY: setup demo lint test test-gpu test-gpu-machine-mix java browser data models gpu-check gpu-check-dry gpu-wheels

setup: $(VENV)/.installed

# DeepSpeed builds its CPU ops (CPU Adam, shared-memory comm) into $TORCH_EXTENSIONS_DIR, by default one folder
# in ~/.cache for every checkout: a build for one venv's sources is rebuilt (minutes on 2 cores) the next time
# another venv loads it. Each venv keeps its own (tests/conftest.py sets the same folder for a bare pytest).
$(VENV)/.installed test gpu-check-dry: export TORCH_EXTENSIONS_DIR = $(abspath $(VENV))/torch_extensions

$(VENV)/.installed: requirements.txt $(REQUIREMENTS) pyproject.toml
	$(BASE_PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r $(REQUIREMENTS)
	# Build DeepSpeed's CPU Adam and shared-memory ops now, not in the middle of the first DeepSpeed run.
	$(PYTHON) -c "from deepspeed.accelerator import get_accelerator as a; \
	  [b.load() for n in ('CPUAdamBuilder', 'ShareMemCommBuilder') if (b := a().create_op_builder(n))]"
	touch $@

demo: setup java
	$(PYTHON) recipes/full_ft.py --config recipes/configs/demo.yaml

# `make lint`: ruff's lint and format checks (pyproject.toml), as CI runs them.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup java browser
	$(PYTHON) -m pytest -q tests

test-gpu: setup
	$(PYTHON) -m pytest -q -m gpu tests

# The lent GPU machine's mix: Python 3.12 (pyenv's, or python3.12 on PATH), torch 2.11 + torchvision 0.26.
GPU_MACHINE_PYTHON ?= $(or $(shell PYENV_VERSION=$$(pyenv versions --bare 2>/dev/null | grep -m1 '^3\.12') \
	pyenv which python3.12 2>/dev/null),$(shell command -v python3.12))
test-gpu-machine-mix:
	@test -n "$(GPU_MACHINE_PYTHON)" || (echo "no Python 3.12 here (pyenv or python3.12 on PATH)" >&2; exit 1)
	$(MAKE) test VENV=.venv-gpu-machine-mix REQUIREMENTS=requirements-gpu-machine.txt BASE_PYTHON=$(GPU_MACHINE_PYTHON)

# Caption metrics tokenize with the COCO (Stanford PTB) tokenizer, which runs on Java.
java:
	@command -v java >/dev/null || (apt-get update -q && apt-get install -y -q default-jre-headless)

# The alt-text page test opens the generated page in headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

# Regenerate the embedded data and tiny models (their outputs are committed).
data: setup
	$(PYTHON) data/make_gourmetgram_mini.py

models: setup
	$(PYTHON) data/make_tiny_models.py

# No install on the GPU machine: the package is found on PYTHONPATH, beside the carried wheels.
gpu-check:
	PYTHONPATH=$(CURDIR)/recipes$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_FLAGS)

gpu-check-dry: setup
	$(PYTHON) benchmarks/gpu_check.py --dry $(GPU_CHECK_FLAGS)

gpu-wheels: setup
	$(PYTHON) scripts/gather_gpu_wheels.py
