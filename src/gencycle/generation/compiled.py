"""Compiled decoding: each one-token step of greedy / sampling generation as one compiled graph.

    model = compile_decoding(load_model("smollm2-135m-instruct", quantize="int4"))
    generate(model, ids, max_new_tokens=128)    # first call per (batch, size): compiles, ~10-40 s

At batch 1 a small model's decoding step is a few hundred tiny kernels, and in eager PyTorch the
Python and dispatch cost of launching them is as large as the matrix products themselves
(benchmarks/RESULTS.md). Here the step `Transformer.decode_step` goes through `torch.compile`:

- shapes are fixed: a StaticKVCache, attention over every slot with the unfilled ones masked,
  positions as tensors; the cache size is rounded up to a power of two and each batch size
  gets its own graph, so a handful of graphs serve every prompt (torch caches them on disk);
- inductor's "freezing" makes the weights constants of the graph, which lets it pre-pack the
  fp32 / bf16 matrices for oneDNN's matrix kernels (on CPU much faster than the plain layout
  with MKL, see _onednn_fp32_linears) at the cost of a packed copy of them in memory;
- inductor's C++ wrapper launches the graph's kernels, and torch checks only the identity of the
  weights before each step (not thousands of module attributes): a step costs little more than
  its kernels. SmolLM2-135M int4 decodes about 2x faster than eagerly (`make bench`).
  compile_decoding fuses q|k|v and gate|up first (model/fusion.py).

The graph cannot see a change to the model, so each generate call (once, not each step) compares
the model's `fingerprint` with the one taken when the compiled step was built: the module tree
(names, types, train / eval mode) and, for every parameter and buffer, its identity, data pointer,
dtype, device and version counter, which in-place writes bump (load_state_dict, copy_, merging
LoRA), plus the count of torch.optim steps that updated it (fused AdamW bumps no version counter).
Any difference (adapters added, merged or loaded, weights loaded or trained, `.to(dtype / device)`)
builds the step again: that call compiles anew (tens of seconds; in torch 2.13 the old graphs'
memory, about the weights' size, is not returned, even by torch._dynamo.reset). Not checked: plain
attributes of modules (a LoRA layer's `scaling`, a config field), writes through `.data` or from
outside torch, and writes to tensors made under torch.inference_mode (they have no version
counter). A wrapper around a compiled model (PromptTuningModel) is refused: the compiled steps are
the bare model's.

Fast starts: torch.compile's graphs live in the process; a later process traces and compiles
again (its disk cache saves part of the work, not the tracing: minutes on a loaded 2-core
machine for SmolLM2). `compile_decoding(model, packages="auto")` compiles the step of each batch
size (for every cache size) ahead of time instead (torch.export + AOTInductor, `AheadOfTimeSteps`)
into a shared library beside the GGUF cache, keyed by the weights' content: a later process with
the same weights hashes them (~0.4 s for SmolLM2 int4) and loads the library (~0.2 s) where
torch.compile would trace and compile.
The folder keeps the most recently used libraries within GENCYCLE_COMPILED_CACHE_GB (`prune`).

The prompt's prefill stays eager (its length varies). Beam search, encoder-decoder models and
calls with gradients enabled decode eagerly. A finished row is not dropped from the compiled
batch (that would change its shape); its results are just no longer read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
import types
import zipfile
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

from ..assets import cache_dir
from ..model.cache import StaticKVCache
from ..model.fusion import fuse_for_inference
from ..model import cpu_kernels
from ..model.transformer import Transformer
from .state import DecodeState

MIN_SLOTS = 64
# inductor settings of every compiled step, in this process and ahead of time (see CompiledStep.__call__)
STEP_OPTIONS = {"freezing": True, "emulate_precision_casts": True}
MAX_GRAPHS = 128  # graphs of one compiled step: one per batch size and cache size
SLOTS = torch.export.Dim("slots", min=2)  # an ahead-of-time step's cache size: any (AheadOfTimeSteps)
# ahead-of-time libraries kept in a folder, in GB (GENCYCLE_COMPILED_CACHE_GB): after each build the least
# recently used ones beyond it go, and build folders a killed process left behind (`prune`)
DEFAULT_PACKAGE_GB = 10.0
STALE_BUILD_SECONDS = 24 * 3600
_REBUILD = threading.Lock()
_OPTIMIZER_STEPS = WeakIdKeyDictionary()  # parameter -> torch.optim steps over it, once compile_decoding ran
_watching = False


def has_cpp_compiler() -> bool:
    """Whether torch.compile can build CPU kernels here (it needs a C++ compiler)."""
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def compile_decoding(model, packages: str | os.PathLike | None = None):
    """Make `generate` / `stream` on this decoder-only Transformer run compiled steps; returns the
    model, in eval mode with its projections fused (`fuse_for_inference`).

    packages: None compiles each step shape with torch.compile in this process (torch's disk cache
    makes a later process faster, not fast); "auto" or a folder compiles each batch size's step ahead of time
    (torch.export + AOTInductor) into a package in that folder ("auto": `default_package_dir()`,
    beside the GGUF cache), keyed by the weights' content, so that a later process loads it in
    well under a second instead of compiling (see `AheadOfTimeSteps`)."""
    if not isinstance(model, Transformer):
        raise TypeError(f"compile_decoding takes a Transformer, not a {type(model).__name__}: compiled steps "
                        "run the model's own decode_step, without what a wrapper adds")
    if model.config.architecture != "decoder":
        raise ValueError(f"compiled decoding is for decoder-only models, not {model.config.architecture!r} ones")
    if model.device.type == "cpu" and not has_cpp_compiler():
        raise RuntimeError("compiled decoding on CPU needs a C++ compiler (g++ or clang++) for torch.compile; "
                           "install one, or decode eagerly (without compile)")
    fuse_for_inference(model.eval())
    _watch_optimizer_steps()
    if packages == "auto":
        packages = default_package_dir()
    model.compiled_decoding = CompiledStep(model, packages=None if packages is None else Path(packages))
    return model


def default_package_dir() -> Path:
    """`$GENCYCLE_CACHE/compiled`, or `~/.cache/gencycle/compiled` (beside the GGUF cache)."""
    return cache_dir("compiled")


def _watch_optimizer_steps() -> None:
    """Count torch.optim steps per parameter from now on (one hook for the process, for `fingerprint`)."""
    global _watching
    with _REBUILD:
        if not _watching:
            register_optimizer_step_post_hook(_count_optimizer_step)
            _watching = True


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            _OPTIMIZER_STEPS[parameter] = _OPTIMIZER_STEPS.get(parameter, 0) + 1


def fingerprint(model) -> tuple:
    """What a compiled step checks before each generate call (see the module docstring)."""
    parts = []
    for name, module in model.named_modules():
        parts.append((name, type(module), module.training))
        for key, t in (*module._parameters.items(), *module._buffers.items()):
            if t is None:
                parts.append((key, None))
            else:
                version = -1 if t.is_inference() else t._version
                parts.append((key, id(t), t.data_ptr(), t.dtype, t.device, version, _OPTIMIZER_STEPS.get(t)))
    return tuple(parts)


def current_step(model) -> "CompiledStep":
    """The model's compiled step; built again first when the model changed since (`fingerprint`)."""
    step = model.compiled_decoding
    if step.model is not model:
        raise TypeError(f"this {type(model).__name__} wraps a model given to compile_decoding, whose compiled "
                        "steps would skip what the wrapper adds; generate with a wrapper around a model that is "
                        "not compiled (`del <model>.compiled_decoding` makes it decode eagerly again)")
    now = fingerprint(model)
    if now != step.fingerprint:
        with _REBUILD:
            step = model.compiled_decoding
            if now != step.fingerprint:
                step = model.compiled_decoding = CompiledStep(model, now, packages=step.packages)
    return step


class CompiledStep:
    """The model's compiled `decode_step` and the `fingerprint` of the model it was built for;
    torch keeps one graph per (batch size, cache slots)."""

    def __init__(self, model, fingerprint_now: tuple | None = None, packages: Path | None = None):
        self.model = model
        self.fingerprint = fingerprint(model) if fingerprint_now is None else fingerprint_now
        self.lock = threading.Lock()
        self.packages = packages
        self.ahead_of_time = None if packages is None else AheadOfTimeSteps(model, packages)
        self.function = None  # torch.compile's, only without packages (it imports torch._dynamo: 0.8 s)
        if packages is None:
            self.function = torch.compile(_own_decode_step(model), fullgraph=True, dynamic=False,
                                          options={"guard_filter_fn": _identity_guards_on_modules})

    def __call__(self, ids, positions, bias, cache) -> torch.Tensor:
        if self.ahead_of_time is not None:
            with self.lock:
                return self.ahead_of_time(ids, positions, bias, cache)
        # These settings must hold while torch traces, which any call may do (a new shape);
        # options= would come too late. They are global, so calls take turns.
        #   freezing: weights become constants (fp32 / bf16 matrices pre-packed for oneDNN);
        #   emulate_precision_casts: bf16 intermediates rounded where eager rounds them (fused kernels
        #   otherwise keep them in fp32, and greedy tokens then differ from eager's after near-ties;
        #   SmolLM2 int4 / bf16 steps measured no slower);
        #   cpp_wrapper: the graph's kernels are launched from C++, not from generated Python;
        #   recompile_limit: torch counts a step's graphs, one per batch size and cache size
        #   (its default, 8, is four batch sizes at two cache sizes).
        from torch._dynamo import config as dynamo
        from torch._inductor import config as inductor
        with (self.lock, inductor.patch(cpp_wrapper=True, **STEP_OPTIONS),
              dynamo.patch(recompile_limit=MAX_GRAPHS),
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


class _StepModule(torch.nn.Module):
    """decode_step over plain tensors, for torch.export: each layer's cached keys and values are
    inputs of their own (written in place at `position`), the model's weights its constants. Not
    the cache's two (layers, ...) tensors with the layers as views made inside the graph: export
    then writes each layer's slot into a fresh copy of the whole cache, every layer and step."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, positions, bias, position, *layers):
        cache = StaticKVCache.__new__(StaticKVCache)
        cache._layers = list(zip(layers[0::2], layers[1::2]))
        cache.position, cache.length = position, 0
        return self.model.decode_step(ids, positions, bias, cache)


def _layer_tensors(cache: StaticKVCache) -> list[torch.Tensor]:
    """keys 0, values 0, keys 1, ...: each layer's (B, Hkv, slots, D) views of the cache."""
    return [t for kv in cache._layers for t in kv]


class AheadOfTimeSteps:
    """Compiled steps as AOTInductor shared libraries, one per batch size: `<folder>/<key>-b<batch>.so`.
    The cache's slot count is a dynamic dimension of the exported step (`SLOTS`), so one library serves
    every cache size: a conversation that outgrows its cache does not wait for a new build (the
    step's kernels do not depend on it: SmolLM2 int4, batch 8, 256 slots, 6.5-6.8 ms a step with the
    static library and 6.5-6.8 with the dynamic one). The key hashes the weights' bytes, the config, the model
    code, torch's version and the CPU's capability, so a library is found again exactly when it
    would be compiled the same; a missing one is exported and compiled (once: tens of seconds to
    minutes), written atomically, then loaded: a `dlopen`, a fraction of a second. A library holds
    its weights, frozen and pre-packed as in `CompiledStep`'s graphs (about the size of the weights
    that a step reads, per file). Loading one marks it used (its mtime); after a build, `prune` removes
    the least recently used libraries beyond GENCYCLE_COMPILED_CACHE_GB (default 10) in the folder."""

    def __init__(self, model, folder: Path):
        self.model, self.folder = model, Path(folder)
        self.key = package_key(model)
        self.runners: dict[int, object] = {}  # batch size -> loaded library

    def path(self, batch: int) -> Path:
        return self.folder / f"{self.key}-b{batch}.so"

    def runner(self, batch: int, slots: int):
        """The loaded library for this batch size (any cache size), built first when there is none."""
        runner = self.runners.get(batch)
        if runner is None:
            path = self.path(batch)
            try:
                os.utime(path)  # used now: prune keeps the recently used ones
            except FileNotFoundError:
                self.build(batch, slots, path)
                prune(self.folder, keep=path)
            except OSError:  # a read-only folder: load it all the same
                pass
            if path.with_suffix(".json").is_file():  # the library calls custom ops (gencycle's kernels):
                cpu_kernels.available()              # built and registered before it loads
            device = self.model.device
            aoti = torch._C._aoti
            runner = (aoti.AOTIModelContainerRunnerCpu(str(path), 1) if device.type == "cpu"
                      else aoti.AOTIModelContainerRunnerCuda(str(path), 1, str(device)))
            self.runners[batch] = runner
        return runner

    def build(self, batch: int, slots: int, path: Path) -> None:
        model = self.model
        print(f"gencycle: compiling the decoding step for batch {batch} ahead of time (once per model and "
              f"batch size, for every cache size; minutes on a few cores; later runs load {path.name})",
              file=sys.stderr, flush=True)
        with torch.inference_mode(False), torch.no_grad():
            cache = StaticKVCache.for_model(model, batch, slots)
            ids, positions = (torch.zeros(batch, 1, dtype=torch.long, device=model.device) for _ in range(2))
            bias = torch.zeros(batch, 1, 1, slots, dtype=model.dtype, device=model.device)
            position = torch.zeros(1, dtype=torch.long, device=model.device)  # distinct tensors: export would
            layers = _layer_tensors(cache)                                    # alias one passed twice
            program = torch.export.export(_StepModule(model), (ids, positions, bias, position, *layers),
                                          dynamic_shapes=(None, None, {3: SLOTS}, None, tuple({2: SLOTS} for _ in layers)),
                                          strict=False)
            path.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(dir=path.parent, prefix=".build-"))
            try:
                with _onednn_fp32_linears():
                    package = torch._inductor.aoti_compile_and_package(
                        program, package_path=str(work / "step.pt2"),
                        inductor_configs=STEP_OPTIONS)
                with zipfile.ZipFile(package) as archive:  # the library (weights inside) and the json that
                    library = next(n for n in archive.namelist() if n.endswith(".so"))  # names its custom ops:
                    for member, suffix in ((library[:-3] + ".json", ".json"), (library, ".so")):  # loading
                        if member in archive.namelist():                                        # needs no
                            with archive.open(member) as source, open(work / f"step{suffix}", "wb") as target:
                                shutil.copyfileobj(source, target, 1 << 24)                     # unpacking
                if (work / "step.json").exists():
                    os.replace(work / "step.json", path.with_suffix(".json"))
                os.replace(work / "step.so", path)  # whole or not at all, also with another process building it
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def __call__(self, ids, positions, bias, cache) -> torch.Tensor:
        runner = self.runner(ids.shape[0], cache.max_length)
        inputs = [ids, positions, bias, cache.position, *_layer_tensors(cache)]  # the library trusts the
        return runner.run([t if t.is_contiguous() else t.contiguous() for t in inputs])[0]  # layout it was built for


def package_key(model) -> str:
    """What an ahead-of-time package depends on, hashed: every parameter's and buffer's name,
    dtype, shape and bytes; the config; the source of gencycle's model code; torch's version; the
    CPU's capability (the kernels are built for it)."""
    digest = hashlib.sha1()  # not for security: a content address (sha1 runs on the CPU's SHA instructions)
    model_code = Path(__file__).resolve().parent.parent / "model"
    for source in sorted(model_code.glob("*.py")):
        digest.update(source.read_bytes())
    digest.update(Path(__file__).read_bytes())
    digest.update(f"{torch.__version__} {torch.backends.cpu.get_cpu_capability()} {model.config!r} "
                  f"{type(model).__name__} {getattr(model, 'quantization', None)}".encode())
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if name.rpartition(".")[2] == "weight_bf16":  # a quantized layer's prefill copy, made from its
            continue                                   # quantized weights (hashed) and not read by a step
        data = tensor.detach().contiguous().view(-1)
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(memoryview(data.view(torch.uint8).cpu().numpy()))
    return digest.hexdigest()[:24]


def prune(folder: Path, keep: Path | None = None, limit_gb: float | None = None) -> list[Path]:
    """Remove the least recently used ahead-of-time libraries (each with its .json) from `folder` until
    the rest fit in `limit_gb` (default: $GENCYCLE_COMPILED_CACHE_GB, else DEFAULT_PACKAGE_GB), never
    `keep`; and build folders older than a day (a killed build's; a running one is younger). A library
    that a process has loaded stays usable there (Linux keeps an open file until it is closed).
    Returns the removed libraries."""
    if limit_gb is None:
        value = os.environ.get("GENCYCLE_COMPILED_CACHE_GB", "")
        try:
            limit_gb = float(value) if value else DEFAULT_PACKAGE_GB
        except ValueError:
            raise ValueError(f"GENCYCLE_COMPILED_CACHE_GB must be a number of GB, not {value!r}") from None
    now = time.time()
    for work in folder.glob(".build-*"):
        with contextlib.suppress(OSError):
            if now - work.stat().st_mtime > STALE_BUILD_SECONDS:
                shutil.rmtree(work, ignore_errors=True)
    libraries = []
    for library in folder.glob("*.so"):
        with contextlib.suppress(OSError):  # another process may remove it meanwhile
            info = library.stat()
            libraries.append((info.st_mtime, info.st_size, library))
    total, removed = sum(size for _, size, _ in libraries), []
    for _, size, library in sorted(libraries, key=lambda entry: entry[0]):  # least recently used first
        if total <= limit_gb * 1e9:
            break
        if keep is not None and library == keep:
            continue
        for path in (library, library.with_suffix(".json")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        total -= size
        removed.append(library)
    return removed


def _own_decode_step(model):
    """model.decode_step over its own copy of the function's code. torch.compile keeps graphs per
    code object, and their guards tell models apart only by the identity of their tensors: a step
    built again for a model whose weights were loaded in place would find the stale graphs. With
    its own code object a step's graphs are its own, and are freed with it."""
    function = type(model).decode_step
    own = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                             function.__defaults__, function.__closure__)
    return types.MethodType(own, model)


def _identity_guards_on_modules(entries) -> list[bool]:
    """Which of torch's guards to check before each step. Of those on the model's modules, keep the
    identity checks of its parameters and buffers: they tell one model's graph (its weights frozen
    in) from another's. The thousands of checks on module attributes would cost about 1 ms a step
    at batch 1; changes of structure are caught once per generate call instead (`fingerprint`)."""
    return [not entry.orig_guard.source.is_unspecialized_nn_module() or entry.guard_type == "ID_MATCH"
            for entry in entries]


def cache_slots(length: int) -> int:
    """Cache size for `length` positions: the next power of two (at least MIN_SLOTS)."""
    return max(MIN_SLOTS, 1 << (length - 1).bit_length())


class CompiledDecodeState(DecodeState):
    """A decoder-only DecodeState whose steps after the prompt run the model's compiled step."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int):
        self.step = current_step(model)  # checked once per generate call, before any work
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
        logits = self.step(self.tokens, self.positions, self.bias, cache)
        cache.advance(1)
        self.positions += 1
        return logits if self.rows is None else logits[self.rows]

    def select(self, index: torch.Tensor) -> None:
        """Keep a subset of the running rows (sample_steps drops finished ones): only bookkeeping."""
        if self.rows is None:
            self.tokens = self.tokens.clone()  # rows that finish keep their last token as input
        self.rows = index if self.rows is None else self.rows[index]
