"""Weight-only quantization for inference: int8 per output channel, int4 per group of inputs.

    model = load_model("smollm2-135m-instruct", quantize="int8")    # or "int4", "int4-g32"
    quantize_model(model, "int4", group_size=64)                    # an already loaded model

Every Linear of the encoder and decoder stacks becomes a `QuantizedLinear`, after the self-attention
q|k|v and the gated MLP's gate|up are fused into one layer each (`fusion.fuse_for_inference`; same
numbers: int8 scales are per output row and int4 groups run along the input, so stacking rows
changes nothing), which saves kernel calls when decoding. Only the Linear layers change: the rest of
the model (embedding, norms, attention, KV cache) keeps its dtype. The kernels:

- int8: PyTorch's `aten._weight_int8pack_mm` (CPU and CUDA), with bf16 inputs;
- int4 on a CPU with AVX512-VNNI: gencycle's own `torch.ops.gencycle.int4_mm` (cpu_kernels.py:
  8-bit activations in blocks of 32, integer dot products, built once per machine; also inside
  compiled steps), else PyTorch's `aten._weight_int4pack_mm_for_cpu`;
- int4 on CUDA: `aten._weight_int4pack_mm` (tinygemm, sm80+).

    int8: w ~= q * scale,                 q in [-127, 127], one bf16 scale per output row
    int4: w ~= (q - 8) * scale + zero,    q in [0, 15], bf16 scale and zero per `group_size` inputs

The LM head is quantized too (it is the largest matrix of a small model and is read for every
token). When it is tied to the input embedding, the head gets its own quantized copy and the
embedding stays as it is for lookups: the tie is dropped, which costs the size of the quantized
copy in memory and halves (int8) or quarters (int4) the bytes read per token for the head.
`quantize_head=False` keeps the head as it is.

Products over many rows (a prompt's prefill, a large batch) are where the weight-only kernels lose:
they are matrix-vector kernels, so their time grows with every row, while bf16 matrix kernels (AMX /
AVX512-BF16 on CPU) barely notice a few hundred rows (a prompt of 128 tokens: 5-10x faster than
the int8 / int4 kernels on this project's Xeon, benchmarks/RESULTS.md). `prefill="bf16"` keeps a
bf16 copy of the *dequantized* weights (the quantized model's own numbers, rounded to bf16) and
uses it for every product over at least `MATRIX_ROWS` rows; decoding steps (a few rows) keep
the int8 / int4 kernels and their smaller reads. The copy costs 2 bytes per weight of memory (on
top of the 1 or ~0.56 of the quantized weights); `prefill="kernel"` keeps only the quantized weights
and runs every product through the kernels. The default, "auto", keeps the copy where bf16 matrix
products are native (a CPU with AMX or AVX512-BF16) and not elsewhere.

int4 needs in_features divisible by the group size (32 by default; 64, 128, 256) and out_features by 16
(CPU) or 8 (CUDA). A layer that does not fit falls back to int8 with a warning, or raises
ValueError when `strict=True`. A quantized model is for inference only: it cannot be trained
or saved in the Hugging Face layout (save the model before quantizing it).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernels
from .cpu_kernels import cpu_flags  # noqa: F401  (re-exported: generation.defaults reads it here)
from .fusion import FusedLinear, fuse_for_inference
from .layers import Attention, FeedForward

GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 32  # as GGUF's Q4_0 / Q4_1 blocks; see quantize_model
PREFILL_MODES = ("auto", "bf16", "kernel")
# Products over at least this many rows use the bf16 copy, when one is kept: about where bf16
# matrix kernels overtake PyTorch's int8 / int4 ones (SmolLM2's layers, one pass over all of them
# with bf16 inputs: int8 kernel 7.0 / 13.9 / 26.6 ms at 4 / 8 / 16 rows, bf16 copy 10.6-10.8 ms),
# and gencycle's int4 one (about 64 rows: one pass over SmolLM2's layers, 2 threads, int4 kernel
# 16.2 / 32.4 / 48.3 ms at 32 / 64 / 96 rows, bf16 copy 27.1 / 34.5 / 39.8 ms), on this project's Xeon.
MATRIX_ROWS = 8
VNNI_MATRIX_ROWS = 64
aten = torch.ops.aten


@functools.cache
def native_bf16_matmul(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matrix products run on native hardware: a CPU with AMX-BF16 or AVX512-BF16,
    or a CUDA GPU that supports bf16 (on other CPUs oneDNN emulates bf16, slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None and amx is not None:
        return bool(probe() or amx())
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_prefill(prefill: str, device: torch.device | str) -> str:
    """"auto" -> "bf16" where bf16 matrix products are native on this CPU, else "kernel"."""
    if prefill not in PREFILL_MODES:
        raise ValueError(f"prefill must be one of {', '.join(map(repr, PREFILL_MODES))}, got {prefill!r}")
    if prefill == "auto":
        device = torch.device(device)
        return "bf16" if device.type == "cpu" and native_bf16_matmul(device) else "kernel"
    return prefill


def parse_mode(mode: str, group_size: int | None = None) -> tuple[int, int | None]:
    """"int8" -> (8, None); "int4" -> (4, group_size); "int4-g32" -> (4, 32)."""
    name = str(mode).lower()
    if name == "int8":
        return 8, None
    if name == "int4" or name.startswith("int4-g"):
        if name != "int4":
            suffix = name.removeprefix("int4-g")
            if not suffix.isdigit():
                raise ValueError(f"unknown quantization {mode!r}; use int8, int4 or int4-g<group size>")
            group_size = int(suffix)
        if group_size is not None and group_size not in GROUP_SIZES:
            raise ValueError(f"int4 group_size must be one of {GROUP_SIZES}, got {group_size}")
        return 4, group_size
    raise ValueError(f"unknown quantization {mode!r}; use 'int8', 'int4' or 'int4-g<group size>' "
                     f"(group sizes {', '.join(map(str, GROUP_SIZES))})")


def int4_problem(out_features: int, in_features: int, group_size: int, device: torch.device) -> str | None:
    """Why the int4 kernels cannot take this shape, or None when they can."""
    if in_features % group_size:
        return f"in_features {in_features} is not a multiple of the group size {group_size}"
    if device.type == "cuda":
        if out_features % 8 or in_features % 32:
            return f"CUDA int4 needs out_features % 8 == 0 and in_features % 32 == 0, got ({out_features}, {in_features})"
    elif out_features % 16:
        return f"out_features {out_features} is not a multiple of 16"
    return None


class QuantizedLinear(nn.Module):
    """y = x W^T + b with W stored as int8 (per output row) or int4 (per group along the input).

    x: (..., in_features) in any float dtype; it is cast to bf16 for the kernel and the result
    back to x's dtype. Build it from a float weight (out_features, in_features).
    prefill: "bf16" keeps `weight_bf16`, the dequantized weight in bf16, for products over at least
    MATRIX_ROWS rows; "kernel" keeps none; "auto" picks by the hardware (`resolve_prefill`).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, bits: int = 8,
                 group_size: int | None = None, prefill: str = "auto"):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bits, self.group_size = bits, group_size
        self.kernel, self.matrix_rows = "aten", MATRIX_ROWS
        prefill = resolve_prefill(prefill, weight.device)
        w = weight.detach().float()
        if bits == 8:
            dequantized = self._pack_int8(w)
        elif bits == 4:
            problem = int4_problem(self.out_features, self.in_features, group_size, w.device)
            if problem:
                raise ValueError(f"int4 cannot quantize this layer: {problem}")
            dequantized = self._pack_int4(w)
        else:
            raise ValueError(f"bits must be 8 or 4, got {bits}")
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))
        # not saved (a quantized model is not saved anyway), but moved and copied with the layer
        self.register_buffer("weight_bf16", dequantized.to(torch.bfloat16) if prefill == "bf16" else None,
                             persistent=False)

    def _pack_int8(self, w: torch.Tensor) -> torch.Tensor:
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)       # (N,)
        q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)     # (N, K)
        self.register_buffer("weight_int8", q)
        self.register_buffer("scales", scale)
        return q.float() * scale.float()[:, None]

    def _pack_int4(self, w: torch.Tensor) -> torch.Tensor:
        N, K, G = self.out_features, self.in_features, self.group_size
        groups = w.view(N, K // G, G)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)                           # (N, K/G)
        scale = ((high - low) / 15).clamp(min=1e-12).to(torch.bfloat16)
        zero = (low + 8 * scale.float()).to(torch.bfloat16)                             # the value of q = 8
        q = torch.round((groups - zero.float()[..., None]) / scale.float()[..., None] + 8)
        q = q.clamp(0, 15).to(torch.int32).view(N, K)
        self.kernel = "aten"
        if w.is_cuda:  # tinygemm's tiled layout, from two 4-bit values per byte
            inner_k_tiles = next(t for t in (8, 4, 2) if K % (16 * t) == 0)
            packed = aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), inner_k_tiles)
        elif cpu_kernels.available():  # 8-bit activations on AVX512-VNNI (cpu_kernels.py)
            self.kernel, self.matrix_rows = "gencycle", VNNI_MATRIX_ROWS
            packed, scales, zeros = cpu_kernels.pack_int4(q, scale, zero, G)
            self.register_buffer("weight_int4", packed)
            self.register_buffer("int4_scales", scales)
            self.register_buffer("int4_zeros", zeros)
        else:
            packed = aten._convert_weight_to_int4pack_for_cpu(q, 2)
        if self.kernel == "aten":
            self.register_buffer("weight_int4", packed)
            self.register_buffer("scales_and_zeros", torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous())
        return ((q.view(N, K // G, G) - 8) * scale.float()[..., None] + zero.float()[..., None]).view(N, K)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight (N, K) the kernel computes with (for tests and inspection)."""
        if self.bits == 8:
            return self.weight_int8.float() * self.scales.float()[:, None]
        eye = torch.eye(self.in_features, device=self.weight_int4.device)
        return self._matmul(eye).float().t()  # columns of W^T, read back through the kernel itself

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:  # x: (M, K) contiguous -> (M, N) bf16 or fp32
        if self.kernel == "gencycle":  # takes fp32 or bf16
            return torch.ops.gencycle.int4_mm(x, self.weight_int4, self.int4_scales, self.int4_zeros, self.group_size)
        x = x.to(torch.bfloat16) if x.dtype != torch.bfloat16 else x  # the kernels' activation type
        if self.bits == 8:
            return aten._weight_int8pack_mm(x, self.weight_int8, self.scales)
        if x.is_cuda:
            return aten._weight_int4pack_mm(x, self.weight_int4, self.group_size, self.scales_and_zeros)
        return aten._weight_int4pack_mm_for_cpu(x, self.weight_int4, self.group_size, self.scales_and_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)                                  # (M, K)
        if self.weight_bf16 is not None and x2.shape[0] >= self.matrix_rows:  # a prompt, a big batch
            y = F.linear(x2.to(torch.bfloat16), self.weight_bf16, self.bias)
        else:
            y = self._matmul(x2 if x2.is_contiguous() else x2.contiguous())    # (M, N)
            if self.bias is not None:
                y = y + self.bias
        y = y.view(*x.shape[:-1], self.out_features)
        return y.to(x.dtype) if y.dtype != x.dtype else y

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}, {self.kernel} kernel" if self.bits == 4 else ""
        copy = ", bf16 copy for prefill" if self.weight_bf16 is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}{group}{copy}"


# ------------------------------------------------------------------ swapping a model's layers
class _Quantizer:
    """Turns float weights into QuantizedLinear layers, remembering which ones fell back to int8."""

    def __init__(self, bits: int, group_size: int | None, strict: bool, prefill: str):
        self.bits, self.group_size, self.strict = bits, group_size or DEFAULT_GROUP_SIZE, strict
        self.prefill = prefill
        self.fallbacks: list[str] = []

    def __call__(self, name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> QuantizedLinear:
        if self.bits == 8:
            return QuantizedLinear(weight, bias, 8, prefill=self.prefill)
        N, K = weight.shape
        problem = int4_problem(N, K, self.group_size, weight.device)
        if problem is None:
            return QuantizedLinear(weight, bias, 4, self.group_size, prefill=self.prefill)
        if self.strict:
            raise ValueError(f"int4 cannot quantize {name} ({N} x {K}): {problem}; "
                             "pick another group_size, or strict=False to fall back to int8 for such layers")
        self.fallbacks.append(f"{name} ({problem})")
        return QuantizedLinear(weight, bias, 8, prefill=self.prefill)



@torch.no_grad()
def quantize_model(model, mode: str = "int8", group_size: int | None = None, strict: bool = False,
                   quantize_head: bool = True, prefill: str = "auto"):
    """Swap the model's Linear layers for QuantizedLinear in place; returns the model (in eval mode).

    mode: "int8", "int4" or "int4-g<size>". group_size (int4): 32 (the default), 64, 128 or 256.
    32 costs 1 bit per weight more than 128 (a bf16 scale and zero per group) and is much more
    accurate; on SmolLM2, whose weights come from a Q4_1 file (groups of 32), it reproduces the
    file's 4-bit grid, where 64 and 128 quadruple the logit error (benchmarks/RESULTS.md).
    strict: raise instead of falling back to int8 for a layer int4 cannot take.
    prefill: "bf16" keeps a bf16 copy of the dequantized weights for products over many rows
    (prompts, large batches: bf16 speed, 2 bytes per weight more memory), "kernel" does not,
    "auto" keeps it where bf16 matrix products are native (module docstring).
    """
    if getattr(model, "quantization", None):
        raise ValueError(f"the model is already quantized ({model.quantization})")
    bits, group_size = parse_mode(mode, group_size)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    quantize = _Quantizer(bits, group_size, strict, resolve_prefill(prefill, device))
    fuse_for_inference(model)
    layers = [(f"{name}.{child}", module, child, layer) for name, module in model.named_modules()
              if isinstance(module, (Attention, FeedForward)) for child, layer in module.named_children()
              if isinstance(layer, nn.Linear)]
    for name, _, _, layer in layers:  # all checked before any is changed
        if type(layer) not in (nn.Linear, FusedLinear):
            raise ValueError(f"cannot quantize {name}: it is a {type(layer).__name__}, not a plain nn.Linear "
                             "(merge LoRA adapters into the weights first: merge_lora(model, unload=True))")
    for name, module, child, layer in layers:
        setattr(module, child, quantize(name, layer.weight, layer.bias))
    if quantize_head and isinstance(getattr(model, "lm_head", None), nn.Module):
        head = model.lm_head
        model.lm_head = quantize("lm_head", head.weight, head.bias)  # a tied head gets its own copy
    if quantize.fallbacks:
        warnings.warn(f"int4 does not fit {len(quantize.fallbacks)} layer(s), quantized to int8 instead: "
                      + "; ".join(quantize.fallbacks[:4]) + (" ..." if len(quantize.fallbacks) > 4 else ""),
                      stacklevel=2)
    model.quantization = "int8" if bits == 8 else f"int4 (group size {quantize.group_size})"
    model.quantized_prefill = quantize.prefill  # "bf16": a bf16 copy serves products over many rows
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()
