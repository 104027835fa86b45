# Two commands do all the set-up on a fresh machine:
#   make test   -> venv + packages, then the test suite
#   make lint   -> venv + packages, then ruff with the configuration in pyproject.toml
#   make demo   -> venv + packages (+ Fashion-MNIST via apt when missing), then the demo chain
#   make test-gpu -> every needs_cuda test (GPU suite; skipped with its reason where torch sees no GPU)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgenas-installed
# torch/torchvision come from the machine's local wheel index (no multi-GB download).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install lint test test-gpu demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH_PINS) 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/python -c "import torch, torchvision, onnxruntime, thop, typer, edgenas"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check edgenas tests benchmarks scripts

test: $(STAMP)
	$(BIN)/python -m pytest -q

# All collected and skipped (no GPU) exits 0; -rs lists each skip with its reason.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m needs_cuda tests

demo: $(STAMP)
	DATA="$(DATA)" bash scripts/demo.sh $(BIN)

clean:
	rm -rf $(VENV) .pytest_cache
