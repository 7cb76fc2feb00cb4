# Two commands on a fresh machine:  make demo   and   make test
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Peers used only for cross-checks and benchmarks; --no-deps because their pins pull old torch and weights
# downloaders. Pinned so that the parity tests always compare against the same code.
PEERS := vdna==0.1.1 pytorch-fid==0.3.0 clean-fid==0.1.35 fungivision==0.0.2 captum==0.9.0 torch-lucent==0.1.8
PYTEST_ARGS ?=

.PHONY: venv demo test lint bench clean

$(BIN)/.installed: pyproject.toml setup.cfg
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch>=2.3" "torchvision>=0.18"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps $(PEERS)
	touch $@

venv: $(BIN)/.installed

# Profiles a built-in set of generated images with a random-weight ViT (no download) and compares two halves.
demo: venv
	$(BIN)/neuroprint demo --out demo-out

test: venv
	TORCHDYNAMO_DISABLE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check engine kernels tests bench
	$(BIN)/ruff format --check engine kernels tests bench

bench: venv
	TORCHDYNAMO_DISABLE=1 $(BIN)/python bench/bench_fd.py
	$(BIN)/python bench/bench_make_vdna.py

clean:
	rm -rf $(VENV) demo-out bench/out
