"""The fast path where it is safe: the device, precision and decoding that `generate`, `chat` and
`serve` use when not told otherwise, and one line that says what was chosen and why.

    choice = inference_defaults()                      # nothing given: all chosen here
    print(choice.description)
    # gencycle: cpu (no GPU), bf16 weights (AMX-BF16, AVX512-BF16 here), compiled decoding (torch.compile
    # with g++); override with --device, --dtype fp32|bf16, --compile / --no-compile
    llm = LLM.load(name, **choice.load_arguments())
    inference_defaults(dtype="fp32", compile=False)    # what the user gave is kept, and said so

The rules:
- device: CUDA when a GPU is there, else the CPU;
- precision: bf16 where bf16 matrix products are native (CUDA with bf16 support, a CPU with
  AMX-BF16 or AVX512-BF16: there bf16 prefill is about 2x fp32 and bf16 decoding 1.5-2x, see
  benchmarks/RESULTS.md), fp32 elsewhere (a CPU without them emulates bf16, slower than fp32).
  With weight-only quantization (int8 / int4) the layers that stay float keep fp32: the quantized
  layers choose their own kernels, and their prefill copy is bf16 anyway (model/quantize.py);
- decoding: compiled steps (`compile_decoding`) where torch.compile can build them: a C++
  compiler for the CPU, Triton for CUDA. Compiled steps give the tokens eager decoding gives
  (tests/test_compiled_decoding.py); the first call per batch size and cache size compiles.

Greedy tokens are what each precision gives: bf16 differs from fp32 after near-ties (about every
30th token on SmolLM2, benchmarks/RESULTS.md), so whoever needs fp32's tokens asks for fp32.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass

import torch

from ..model.quantize import cpu_flags, native_bf16_matmul

DTYPES = ("fp32", "bf16", "fp16")


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


def inference_defaults(device: str | None = None, dtype: str | None = None, compile: bool | None = None,
                       quantize: str | None = None) -> InferenceDefaults:
    """Fill in what was not given (None) by the rules of the module docstring; what was given is kept."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    parts = []
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        parts.append(f"{device} ({'a GPU is there' if device == 'cuda' else 'no GPU'})")
    else:
        parts.append(f"{device} (as asked)")
    if dtype is not None:
        parts.append(f"{dtype} weights (as asked)")
    elif quantize is not None:
        dtype = "fp32"
        parts.append(f"{quantize} layers with fp32 around them")
    else:
        hardware = bf16_hardware(device)
        dtype = "bf16" if hardware else "fp32"
        parts.append(f"bf16 weights ({hardware} here)" if hardware
                     else "fp32 weights (no native bf16 matrix products here)")
    if compile is not None:
        parts.append(f"{'compiled' if compile else 'eager'} decoding (as asked)")
    else:
        tool = compiler_for(device)
        compile = tool is not None
        parts.append(f"compiled decoding (torch.compile with {tool})" if compile
                     else "eager decoding (torch.compile has no " + ("Triton" if device.startswith("cuda")
                                                                    else "C++ compiler") + " here)")
    description = ("gencycle: " + ", ".join(parts)
                   + "; override with --device, --dtype fp32|bf16, --compile / --no-compile")
    return InferenceDefaults(device, dtype, compile, description)
