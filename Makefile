# MathScale: the two commands a newcomer needs are `make quickstart` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
QUICKSTART_MODELS := qwen2.5-coder-1.5b-instruct qwen2.5-coder-0.5b-instruct
TEST_MODELS       := smollm2-135m-instruct
# The embedded models are served by llama.cpp's own server (llama-server: parallel slots, continuous batching, prompt
# cache), compiled once from the llama.cpp sources in the llama-cpp-python sdist into ~/.cache/mathscale, where every
# venv and clone finds it. By default it is built for AVX2 on x86-64: a native build uses every instruction the CPU
# reports, and on VMs that report AMX without enabling it the server dies with SIGSEGV in ggml_backend_amx_mul_mat.
# LLAMA_CMAKE_ARGS replaces those flags (empty: a native build), e.g. make llama-rebuild LLAMA_CMAKE_ARGS=
LLAMA_BUILD := $(BIN)/python -m mathscale_utils.inference.llama_build \
	$(if $(filter undefined,$(origin LLAMA_CMAKE_ARGS)),,--cmake-args="$(LLAMA_CMAKE_ARGS)")

.PHONY: setup llama-rebuild models quickstart test test-fast lint format bench docs lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	@# llama-server compiles (both cores) while pip installs the dependencies (mostly downloading and unpacking);
	@# the build needs only the standard library, so it runs from this directory before the package is installed
	$(LLAMA_BUILD) & build=$$!; \
	$(BIN)/pip install -e '.[dev]'; pip=$$?; \
	wait $$build; built=$$?; \
	[ $$pip -eq 0 ] && [ $$built -eq 0 ]
	$(BIN)/python -m ipykernel install --sys-prefix --name mathscale --display-name "MathScale (.venv)"
	$(BIN)/python -m mathscale_utils.training.serve setup-converter
	touch $(STAMP)

llama-rebuild: setup   # rebuild llama-server with LLAMA_CMAKE_ARGS (e.g. after a crash, or to try a native build)
	$(LLAMA_BUILD) --force

models: setup
	$(BIN)/python -m mathscale_utils.inference.weights install $(QUICKSTART_MODELS) $(TEST_MODELS)

quickstart: setup
	$(BIN)/python -m mathscale_utils.inference.weights install $(QUICKSTART_MODELS)
	$(BIN)/python -m mathscale_utils.runs.chain params/quickstart.yaml

test: setup
	$(BIN)/python -m mathscale_utils.inference.weights install $(TEST_MODELS)
	$(BIN)/python -m mathscale_utils.inference.weights materialize $(TEST_MODELS)
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not browser"

lint: setup
	$(BIN)/ruff check mathscale_utils tests bench notebooks
	$(BIN)/ruff format --check mathscale_utils tests bench notebooks

format: setup
	$(BIN)/ruff format mathscale_utils tests bench notebooks
	$(BIN)/ruff check --fix mathscale_utils tests bench notebooks

bench: setup
	for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

docs: setup   # README's figures, docs/journey.md, docs/img/ and docs/gallery/ from the runs in outputs/ (reporting/docs.py)
	$(BIN)/python -m mathscale_utils.runs.chain params/paper.yaml --plan --json > docs/results/plan_paper.json
	$(BIN)/python -m mathscale_utils.reporting.docs

lab: setup   # from the repository root, so notebooks/ and the executed copies in outputs/<run>/notebooks/ both open
	$(BIN)/jupyter lab

clean:
	rm -rf outputs/*/
