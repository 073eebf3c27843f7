# The two commands a new user runs. Everything they need is installed into .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/flights.yaml

.PHONY: run test lint compile bench bench-mtl bench-tune clean

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

# checkov (Kubernetes security lint) pins packages the project uses too: its own venv
LINT_VENV ?= .venv-lint
$(LINT_VENV)/bin/checkov:
	$(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/pip install --quiet --upgrade pip
	$(LINT_VENV)/bin/pip install --quiet checkov==3.3.30

# schemathesis (OpenAPI fuzzing of the live service) pins its own hypothesis and friends: its own venv
SCHEMATHESIS_VENV ?= .venv-schemathesis
$(SCHEMATHESIS_VENV)/bin/st:
	$(PYTHON) -m venv $(SCHEMATHESIS_VENV)
	$(SCHEMATHESIS_VENV)/bin/pip install --quiet --upgrade pip
	$(SCHEMATHESIS_VENV)/bin/pip install --quiet schemathesis==4.32.5

# the KServe SDK (tests/kserve_schema.py checks the InferenceService against its API models) pins starlette and
# protobuf past BentoML's: its own venv
KSERVE_VENV ?= .venv-kserve
$(KSERVE_VENV)/.installed:
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet --upgrade pip
	$(KSERVE_VENV)/bin/pip install --quiet kserve==0.21.0
	touch $@

## test: lint, then the whole test suite (what CI runs)
test: $(BIN)/.installed $(LINT_VENV)/bin/checkov $(SCHEMATHESIS_VENV)/bin/st $(KSERVE_VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/pytest

compile: $(BIN)/.installed
	$(BIN)/mtlops compile

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks.train_throughput

.PHONY: images gpu-image push-images base-image local-images local-gpu-image

## images: the component, CUDA component and serving images (needs a Docker engine; see infra/README.md)
IMAGE_REPO ?= ghcr.io/mtlops
IMAGE_TAG  ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
BASE_IMAGE ?= python:3.11.11-slim-bookworm
# PyPI's torch for Linux x86_64 is the CUDA build (its CUDA runtime comes as nvidia-* wheels)
CUDA_TORCH_INDEX ?= https://pypi.org/simple
CPU_TORCH_INDEX  ?= https://download.pytorch.org/whl/cpu
# CUDA_IMAGE= (empty) skips mtlops-cuda (several GB to download)
CUDA_IMAGE ?= yes
# a CA bundle the build's pip trusts (behind a TLS-intercepting proxy), a local torch wheel for the CPU images
CA_BUNDLE   ?=
TORCH_WHEEL ?=
EXTRA := infra/docker/extra
DOCKER_BUILD = docker build -f infra/docker/Dockerfile --build-arg GIT_REVISION=$(IMAGE_TAG) \
	--build-arg BASE_IMAGE=$(BASE_IMAGE) $(if $(CA_BUNDLE),--build-arg PIP_CERT=/extra/ca.crt)
# with a local wheel, PyPI serves torch's dependencies and the wheel wins over any torch there
CPU_INDEX = $(if $(TORCH_WHEEL),https://pypi.org/simple,$(CPU_TORCH_INDEX))
NO_ENGINE = { echo "make $@: no Docker engine here ('docker info' failed)." \
	"Build on a machine with Docker, or in CI; the Dockerfile is linted by the tests either way."; exit 1; }
images:
	@docker info >/dev/null 2>&1 || $(NO_ENGINE)
	rm -rf $(EXTRA)/ca.crt $(EXTRA)/wheels
	$(if $(CA_BUNDLE),cp $(CA_BUNDLE) $(EXTRA)/ca.crt)
	$(if $(TORCH_WHEEL),mkdir -p $(EXTRA)/wheels && cp $(TORCH_WHEEL) $(EXTRA)/wheels/)
	$(DOCKER_BUILD) --target serving -t $(IMAGE_REPO)/mtlops-serving:$(IMAGE_TAG) .
	$(DOCKER_BUILD) --target component --build-arg TORCH_INDEX=$(CPU_INDEX) -t $(IMAGE_REPO)/mtlops:$(IMAGE_TAG) .
	$(if $(CUDA_IMAGE),$(MAKE) gpu-image)
	@echo "export MTLOPS_IMAGE=$(IMAGE_REPO)/mtlops:$(IMAGE_TAG) MTLOPS_GPU_IMAGE=$(IMAGE_REPO)/$(if $(CUDA_IMAGE),mtlops-cuda,mtlops):$(IMAGE_TAG)"

## base-image: a Debian bookworm + Python 3.11 base made with debootstrap, where no registry is reachable (root)
base-image:
	infra/docker/build-base.sh mtlops-base:bookworm

## local-images: base-image, then the CPU images from it with this host's CA bundle and torch wheel (no CUDA)
HOST_TORCH_WHEEL = $(firstword $(wildcard $(addsuffix /torch-2.13.0+cpu-*.whl,$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))))
LOCAL_REPO ?= mtlops-local
local-images: base-image
	$(MAKE) images BASE_IMAGE=mtlops-base:bookworm IMAGE_REPO=$(LOCAL_REPO) IMAGE_TAG=dev CUDA_IMAGE= \
		CA_BUNDLE=$(or $(CA_BUNDLE),/etc/ssl/certs/ca-certificates.crt) TORCH_WHEEL=$(or $(TORCH_WHEEL),$(HOST_TORCH_WHEEL))

## gpu-image: the CUDA component image alone (the training step's MTLOPS_GPU_IMAGE): torch from CUDA_TORCH_INDEX,
## never a local CPU wheel; onnxruntime-gpu is already a project dependency
gpu-image:
	@docker info >/dev/null 2>&1 || $(NO_ENGINE)
	rm -rf $(EXTRA)/ca.crt $(EXTRA)/wheels
	$(if $(CA_BUNDLE),cp $(CA_BUNDLE) $(EXTRA)/ca.crt)
	$(DOCKER_BUILD) --target component --build-arg TORCH_INDEX=$(CUDA_TORCH_INDEX) \
		-t $(IMAGE_REPO)/mtlops-cuda:$(IMAGE_TAG) .

## local-gpu-image: gpu-image on the debootstrap base, tagged mtlops-local/mtlops-cuda:dev (several GB from PyPI)
local-gpu-image: base-image
	$(MAKE) gpu-image BASE_IMAGE=mtlops-base:bookworm IMAGE_REPO=$(LOCAL_REPO) IMAGE_TAG=dev \
		CA_BUNDLE=$(or $(CA_BUNDLE),/etc/ssl/certs/ca-certificates.crt)

push-images: images
	docker push $(IMAGE_REPO)/mtlops:$(IMAGE_TAG)
	docker push $(IMAGE_REPO)/mtlops-serving:$(IMAGE_TAG)
	$(if $(CUDA_IMAGE),docker push $(IMAGE_REPO)/mtlops-cuda:$(IMAGE_TAG))

## bench-mtl: every MTL method x 3 seeds on the flights config, quick mode (< 10 min); MODE= for the full run
MODE ?= --quick
bench-mtl: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[test,bench]'
	nice $(BIN)/python -m benchmarks.mtl_methods $(MODE)

## bench-tune: every method tuned with the same Optuna budget, then seeds of its best setting; MODE= for the full run
bench-tune: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[test,bench]'
	nice $(BIN)/python -m benchmarks.tune_methods $(MODE)

clean:
	rm -rf runs build .pytest_cache .ruff_cache
