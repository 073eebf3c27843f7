# The two commands a new user runs. Everything they need is installed into .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/flights.yaml

.PHONY: run test lint compile bench bench-mtl clean

# GPU users: `make run TORCH_INDEX=<PyTorch CUDA wheel index>` installs a CUDA build of the pinned torch first.
TORCH_INDEX ?=

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/pip install --quiet torch==2.13.0 --index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## run: build + version the reference data, then train/evaluate/export/register through kfp.local
run: $(BIN)/.installed
	$(BIN)/mtlops data build --config $(CONFIG)
	$(BIN)/mtlops run --config $(CONFIG)

## test: lint, then the whole test suite (what CI runs)
test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/pytest

compile: $(BIN)/.installed
	$(BIN)/mtlops compile

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/train_throughput.py

## bench-mtl: every MTL method x 3 seeds on the flights config, quick mode (< 10 min); MODE= for the full run
MODE ?= --quick
bench-mtl: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[test,bench]'
	nice $(BIN)/python benchmarks/mtl_methods.py $(MODE)

clean:
	rm -rf runs build .pytest_cache .ruff_cache
