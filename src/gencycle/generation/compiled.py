"""Compiled decoding: each one-token step of greedy / sampling generation as one compiled graph.

    model = compile_decoding(load_model("smollm2-135m-instruct", quantize="int4"))
    model.generate(ids, max_new_tokens=128)    # first call per (batch, size): compiles, ~10-40 s

At batch 1 a small model's decoding step is a few hundred tiny kernels, and in eager PyTorch the
Python and dispatch cost of launching them is as large as the matrix products themselves
(benchmarks/RESULTS.md). Here the step `Transformer.decode_step` goes through `torch.compile`:

- shapes are fixed: a StaticKVCache, attention over every slot with the unfilled ones masked,
  positions as tensors; the cache size is rounded up to a power of two and each batch size
  gets its own graph, so a handful of graphs serve every prompt (torch caches them on disk);
- inductor's "freezing" makes the weights constants of the graph, which lets it pre-pack the
  fp32 / bf16 matrices for oneDNN's matrix kernels (on CPU much faster than the plain layout
  with MKL, see _onednn_fp32_linears) at the cost of a packed copy of them in memory. The
  graph therefore does not see later changes to the weights: compile after training or
  merging adapters, not before;
- inductor's C++ wrapper launches the graph's kernels, and torch checks only the identity of the
  weights before each step (not thousands of module attributes): a step costs little more than
  its kernels. SmolLM2-135M int4 decodes about 2x faster than eagerly (`make bench`).

The prompt's prefill stays eager (its length varies). Beam search, encoder-decoder models and
calls with gradients enabled decode eagerly. A finished row is not dropped from the compiled
batch (that would change its shape); its results are just no longer read.
"""

from __future__ import annotations

import contextlib
import shutil
import threading

import torch

from ..model.cache import StaticKVCache
from ..model.layers import FusableMixin
from .state import DecodeState

MIN_SLOTS = 64
MAX_GRAPHS = 128  # compiled decoding steps per process, all models together


def has_cpp_compiler() -> bool:
    """Whether torch.compile can build CPU kernels here (it needs a C++ compiler)."""
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def compile_decoding(model):
    """Make `generate` / `stream` on this decoder-only model run compiled steps; returns the model."""
    if model.config.architecture != "decoder":
        raise ValueError(f"compiled decoding is for decoder-only models, not {model.config.architecture!r} ones")
    if model.device.type == "cpu" and not has_cpp_compiler():
        raise RuntimeError("compiled decoding on CPU needs a C++ compiler (g++ or clang++) for torch.compile; "
                           "install one, or decode eagerly (without compile)")
    model.eval()
    for module in model.modules():  # the graph cannot check fused storage pointers: check them now
        if isinstance(module, FusableMixin):
            module.refresh_fused()
    model.compiled_decoding = CompiledStep(model)
    return model


class CompiledStep:
    """The model's compiled `decode_step`; torch keeps one graph per (batch size, cache slots)."""

    def __init__(self, model):
        self.function = torch.compile(model.decode_step, fullgraph=True, dynamic=False,
                                      options={"guard_filter_fn": _identity_guards_on_modules})
        self.lock = threading.Lock()

    def __call__(self, ids, positions, bias, cache) -> torch.Tensor:
        # These settings must hold while torch traces, which any call may do (a new shape);
        # options= would come too late. They are global, so calls take turns.
        #   freezing: weights become constants (fp32 / bf16 matrices pre-packed for oneDNN);
        #   cpp_wrapper: the graph's kernels are launched from C++, not from generated Python;
        #   recompile_limit: torch counts graphs per function, across models: one per model,
        #   batch size and cache size (its default, 8, is two models at two batch sizes).
        from torch._dynamo import config as dynamo
        from torch._inductor import config as inductor
        with (self.lock, inductor.patch(freezing=True, cpp_wrapper=True), dynamo.patch(recompile_limit=MAX_GRAPHS),
              _onednn_fp32_linears()):
            return self.function(ids, positions, bias, cache)


@contextlib.contextmanager
def _onednn_fp32_linears():
    """While tracing, let inductor's CPU weight pre-packing give fp32 matrices to oneDNN, as it does
    for bf16 ones (and for fp32 ones in AOT compilation), instead of to MKL's packed sgemm. Same fp32
    arithmetic; on this project's AMD EPYC the oneDNN kernel is 2.3x faster at 8 rows and the whole
    SmolLM2 step about 2.2x (batch 8) and 1.2x (batch 1) faster: benchmarks/RESULTS.md. The choice
    sits in two methods of inductor's CPU pass, whose `is_lp_weight` flag only picks the library."""
    try:
        from torch._inductor.fx_passes.mkldnn_fusion import CpuMkldnnDeviceOp as device_op
        pack_weight, pack_linear = device_op.pack_linear_weight, device_op.pack_linear
    except (ImportError, AttributeError):  # another torch: leave its choice alone
        yield
        return
    device_op.pack_linear_weight = lambda self, graph, _, *args: pack_weight(self, graph, True, *args)
    device_op.pack_linear = lambda self, graph, _, *args: pack_linear(self, graph, True, *args)
    try:
        yield
    finally:
        device_op.pack_linear_weight, device_op.pack_linear = pack_weight, pack_linear


def _identity_guards_on_modules(entries) -> list[bool]:
    """Which of torch's guards to check before each step. Of those on the model's modules, keep the
    identity checks of its parameters and buffers: they tell one model's graph (its weights frozen
    in) from another's. The thousands of checks on module attributes would cost about 1 ms a step
    at batch 1; the structure of a model given to compile_decoding must not change afterwards."""
    return [not entry.orig_guard.source.is_unspecialized_nn_module() or entry.guard_type == "ID_MATCH"
            for entry in entries]


def cache_slots(length: int) -> int:
    """Cache size for `length` positions: the next power of two (at least MIN_SLOTS)."""
    return max(MIN_SLOTS, 1 << (length - 1).bit_length())


class CompiledDecodeState(DecodeState):
    """A decoder-only DecodeState whose steps after the prompt run the model's compiled step."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int):
        super().__init__(model, input_ids, attention_mask, max_new_tokens)
        B, T = input_ids.shape
        filled = torch.zeros(B, self.cache.max_length, dtype=torch.bool, device=input_ids.device)
        filled[:, :T] = True if self.mask is None else self.mask.bool()
        self.positions = filled.sum(dim=1, keepdim=True)     # the next token's position in each row
        dtype = model.dtype                                  # additive mask over the slots: 0 once filled
        self.bias = torch.zeros(filled.shape, dtype=dtype, device=input_ids.device).masked_fill_(
            ~filled, torch.finfo(dtype).min)[:, None, None, :]
        self.rows: torch.Tensor | None = None                # rows of the batch still running (None: all)
        self.tokens: torch.Tensor | None = None              # the step's input, (B, 1)

    def new_cache(self, batch_size: int, length: int) -> StaticKVCache:
        return StaticKVCache.for_model(self.model, batch_size, cache_slots(length))

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        cache = self.cache
        if cache.length == 0:  # the prompt: eager, any length
            return super().__call__(ids)
        slot = cache.length
        if self.rows is None:
            self.tokens = ids
        else:
            self.tokens[self.rows] = ids
        self.bias[..., slot] = 0
        cache.position = torch.tensor([slot], device=ids.device)
        logits = self.model.compiled_decoding(self.tokens, self.positions, self.bias, cache)
        cache.advance(1)
        self.positions += 1
        return logits if self.rows is None else logits[self.rows]

    def select(self, index: torch.Tensor) -> None:
        """Keep a subset of the running rows (sample_steps drops finished ones): only bookkeeping."""
        if self.rows is None:
            self.tokens = self.tokens.clone()  # rows that finish keep their last token as input
        self.rows = index if self.rows is None else self.rows[index]
