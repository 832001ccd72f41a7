"""The fast path where it is safe: the device, precision and decoding that `generate`, `chat` and
`serve` use when not told otherwise, and one line that says what was chosen and why.

    choice = inference_defaults()                      # nothing given: all chosen here
    print(choice.description)
    # gencycle: cpu (no GPU), fp32 weights (greedy decoding keeps fp32's tokens; bf16 is native here
    # (AMX-BF16, AVX512-BF16) and faster: --dtype bf16), eager decoding (compiled fp32 steps measured ...); ...
    llm = LLM.load(name, **choice.load_arguments())
    inference_defaults(dtype="fp32", compile=False)    # what the user gave is kept, and said so
    inference_defaults(sampling=True)                  # sampling: bf16 where it is native, compiled
    inference_defaults(quantize="int4")                # compiled, bf16 around the int4 layers where native

The rules:
- device: CUDA when a GPU is there, else the CPU;
- precision: fp32 for greedy decoding (and for a server, which answers greedy requests too):
  bf16 changes greedy tokens after near-ties (on the shipped test dialogues about a quarter of
  SmolLM2's greedy tokens differ from fp32's, benchmarks/RESULTS.md), and the defaults must not
  change what a greedy run printed before. When sampling, bf16 where bf16 matrix products are native
  (CUDA with bf16 support, a CPU with AMX-BF16 or AVX512-BF16: there bf16 prefill is about 2x fp32
  and bf16 decoding 1.5-2x), fp32 elsewhere (a CPU without them emulates bf16, slower than fp32).
  With weight-only quantization (int8 / int4), bf16 around the quantized layers where bf16 is
  native and decoding is compiled: the compiled step decodes faster than with fp32 around them
  (SmolLM2 int4 on this Xeon: 3.0 vs 3.6 ms a step at batch 1, 8.9 vs 14.1 at batch 8; bf16 attends
  through gencycle's attention kernel) and the prompt runs at bf16 speed (batch 8 prefill 4027 vs
  3288 tok/s). fp32 around them when decoding eagerly (there bf16 steps are slower: 10.2 vs 9.4 ms
  at batch 1) or where bf16 is not native. A quantized
  model's greedy tokens differ from fp32's anyway;
- decoding: compiled steps (`compile_decoding`) on CUDA where Triton can build them, and on the CPU
  for bf16 and quantized models, where they measured about twice as fast as eager steps (SmolLM2,
  batch 1, 256 cache slots, the step library built: bf16 16.7 vs 33.8 ms, int4 3.0 vs 9.4 ms),
  provided the model is large enough to repay compiling (at least MIN_COMPILED_ELEMENTS weights:
  below, a step takes microseconds and compiling takes longer than any generation). Eager on the
  CPU for fp32 (compiled 30.7 vs eager 30.0 ms a step: nothing to repay the build) and for a server
  (`serving=True`: its warm-up builds a step per row count, minutes each the first time on a few
  cores); `--compile` asks for them. Compiled steps give the tokens eager decoding gives
  (tests/test_compiled_decoding.py, tests/test_defaults.py); the command line compiles them ahead
  of time (`packages="auto"`): the first run per batch size builds a library (for every cache size)
  (a minute or more on 2 cores, said on stderr), later processes load it in a fraction of a second.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass

import torch

from ..model.quantize import cpu_flags, native_bf16_matmul

DTYPES = ("fp32", "bf16", "fp16")
MIN_COMPILED_ELEMENTS = 10_000_000  # weights (parameters + buffers) below which decoding stays eager


@dataclass(frozen=True)
class InferenceDefaults:
    """What to run with: `device`, `dtype` ("fp32", "bf16" or "fp16"), `compile` (compiled decoding),
    and `description`, one line naming each choice and what made it."""

    device: str
    dtype: str
    compile: bool
    description: str

    def load_arguments(self) -> dict:
        """Keyword arguments for `LLM.load` / `load_model`-style calls."""
        return {"device": self.device, "dtype": self.dtype, "compile": self.compile}


def bf16_hardware(device: str) -> str | None:
    """What makes bf16 native on `device` ("AMX-BF16, AVX512-BF16", "CUDA bf16"), or None."""
    if torch.device(device).type == "cuda":
        return "CUDA bf16" if native_bf16_matmul(device) else None
    if not native_bf16_matmul("cpu"):
        return None
    flags = cpu_flags()
    named = [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]
    return ", ".join(named) or "native bf16"


def compiler_for(device: str) -> str | None:
    """What torch.compile builds kernels with on `device` (a C++ compiler, Triton), or None."""
    if torch.device(device).type == "cuda":
        return "Triton" if importlib.util.find_spec("triton") is not None else None
    return next((name for name in ("g++", "clang++", "c++") if shutil.which(name)), None)


def model_elements(model) -> int:
    """How many weights a model holds (parameters and buffers: int8 / int4 weights are buffers),
    without a quantized layer's bf16 prefill copy."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return sum(t.numel() for name, t in tensors if name.rpartition(".")[2] != "weight_bf16")


def inference_defaults(device: str | None = None, dtype: str | None = None, compile: bool | None = None,
                       quantize: str | None = None, sampling: bool = False,
                       model_size: int | None = None, serving: bool = False) -> InferenceDefaults:
    """Fill in what was not given (None) by the rules of the module docstring; what was given is kept.
    sampling: the run samples (bf16 is then chosen where native); model_size: the loaded model's
    `model_elements`, when known (a smaller model than MIN_COMPILED_ELEMENTS decodes eagerly);
    serving: for a server (eager on the CPU unless asked)."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    parts = []
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        parts.append(f"{device} ({'a GPU is there' if device == 'cuda' else 'no GPU'})")
    else:
        parts.append(f"{device} (as asked)")
    on_cpu = torch.device(device).type == "cpu"
    tool = compiler_for(device)
    small = model_size is not None and model_size < MIN_COMPILED_ELEMENTS
    hardware = bf16_hardware(device)
    compilable = tool is not None and not small and not (on_cpu and serving)  # before the fp32-on-CPU rule
    if dtype is not None:
        parts.append(f"{dtype} weights (as asked)")
    elif quantize is not None:  # fp32 or bf16 around the quantized layers: by how they decode
        dtype = "bf16" if hardware and (compilable if compile is None else compile) else "fp32"
        if dtype == "bf16":
            parts.append(f"{quantize} layers with bf16 around them ({hardware} here; compiled steps)")
        else:
            reason = "eager steps are faster in fp32" if hardware else "no native bf16 matrix products here"
            parts.append(f"{quantize} layers with fp32 around them ({reason})")
    else:
        dtype = "bf16" if hardware and sampling else "fp32"
        if dtype == "bf16":
            parts.append(f"bf16 weights ({hardware} here; sampling)")
        elif hardware:
            parts.append(f"fp32 weights (greedy decoding keeps fp32's tokens; bf16 is native here ({hardware}) "
                         "and faster, with other tokens after near-ties: --dtype bf16)")
        else:
            parts.append("fp32 weights (no native bf16 matrix products here)")
    if compile is not None:
        parts.append(f"{'compiled' if compile else 'eager'} decoding (as asked)")
    else:
        compile = compilable and not (on_cpu and quantize is None and dtype == "fp32")
        if compile:
            parts.append(f"compiled decoding (torch.compile with {tool}" + (", ahead of time: the first run per "
                                                                             "shape builds it" if on_cpu else "") + ")")
        elif tool is None:
            parts.append("eager decoding (torch.compile has no " + ("Triton" if device.startswith("cuda")
                                                                   else "C++ compiler") + " here)")
        elif small:
            parts.append(f"eager decoding (a model of {model_size:,} weights decodes faster than it compiles)")
        elif serving:
            parts.append("eager decoding (a server's warm-up would build a compiled step per row count: "
                         "--compile builds them)")
        else:
            parts.append("eager decoding (compiled fp32 steps measured no faster on the CPU, README Performance; "
                         "--compile builds them)")
    description = ("gencycle: " + ", ".join(parts)
                   + "; override with --device, --dtype fp32|bf16, --compile / --no-compile")
    return InferenceDefaults(device, dtype, compile, description)
