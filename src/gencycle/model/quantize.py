"""Weight-only quantization for inference: int8 per output channel, int4 per group of inputs.

    model = load_model("smollm2-135m-instruct", quantize="int8")    # or "int4", "int4-g32"
    quantize_model(model, "int4", group_size=64)                    # an already loaded model

Every Linear of the encoder and decoder stacks becomes a `QuantizedLinear`, after the self-attention
q|k|v and the gated MLP's gate|up are fused into one layer each (`fusion.fuse_for_inference`; same
numbers: int8 scales are per output row and int4 groups run along the input, so stacking rows
changes nothing), which saves kernel calls when decoding. The matmul inputs are cast to bf16, the kernels' activation
type; the rest of the model (embedding, norms, attention, KV cache) keeps its dtype. The matmuls
are PyTorch's own kernels: `aten._weight_int8pack_mm` (CPU and CUDA), `aten._weight_int4pack_mm_for_cpu` on CPU and
`aten._weight_int4pack_mm` (tinygemm, sm80+) on CUDA.

    int8: w ~= q * scale,                 q in [-127, 127], one bf16 scale per output row
    int4: w ~= (q - 8) * scale + zero,    q in [0, 15], bf16 scale and zero per `group_size` inputs

The LM head is quantized too (it is the largest matrix of a small model and is read for every
token). When it is tied to the input embedding, the head gets its own quantized copy and the
embedding stays as it is for lookups: the tie is dropped, which costs the size of the quantized
copy in memory and halves (int8) or quarters (int4) the bytes read per token for the head.
`quantize_head=False` keeps the head as it is.

int4 needs in_features divisible by the group size (32 by default; 64, 128, 256) and out_features by 16
(CPU) or 8 (CUDA). A layer that does not fit falls back to int8 with a warning, or raises
ValueError when `strict=True`. A quantized model is for inference only: it cannot be trained
or saved in the Hugging Face layout (save the model before quantizing it).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .fusion import FusedLinear, fuse_for_inference
from .layers import Attention, FeedForward

GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 32  # as GGUF's Q4_0 / Q4_1 blocks; see quantize_model
aten = torch.ops.aten


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
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, bits: int = 8,
                 group_size: int | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bits, self.group_size = bits, group_size
        w = weight.detach().float()
        if bits == 8:
            self._pack_int8(w)
        elif bits == 4:
            problem = int4_problem(self.out_features, self.in_features, group_size, w.device)
            if problem:
                raise ValueError(f"int4 cannot quantize this layer: {problem}")
            self._pack_int4(w)
        else:
            raise ValueError(f"bits must be 8 or 4, got {bits}")
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def _pack_int8(self, w: torch.Tensor) -> None:
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)       # (N,)
        q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)     # (N, K)
        self.register_buffer("weight_int8", q)
        self.register_buffer("scales", scale)

    def _pack_int4(self, w: torch.Tensor) -> None:
        N, K, G = self.out_features, self.in_features, self.group_size
        groups = w.view(N, K // G, G)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)                           # (N, K/G)
        scale = ((high - low) / 15).clamp(min=1e-12).to(torch.bfloat16)
        zero = (low + 8 * scale.float()).to(torch.bfloat16)                             # the value of q = 8
        q = torch.round((groups - zero.float()[..., None]) / scale.float()[..., None] + 8)
        q = q.clamp(0, 15).to(torch.int32).view(N, K)
        if w.is_cuda:  # tinygemm's tiled layout, from two 4-bit values per byte
            inner_k_tiles = next(t for t in (8, 4, 2) if K % (16 * t) == 0)
            packed = aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), inner_k_tiles)
        else:
            packed = aten._convert_weight_to_int4pack_for_cpu(q, 2)
        self.register_buffer("weight_int4", packed)
        self.register_buffer("scales_and_zeros", torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous())

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight (N, K) the kernel computes with (for tests and inspection)."""
        if self.bits == 8:
            return self.weight_int8.float() * self.scales.float()[:, None]
        eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=self.weight_int4.device)
        return self._matmul(eye).float().t()  # columns of W^T, read back through the kernel itself

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:  # x: (M, K) bf16 -> (M, N) bf16
        if self.bits == 8:
            return aten._weight_int8pack_mm(x, self.weight_int8, self.scales)
        if x.is_cuda:
            return aten._weight_int4pack_mm(x, self.weight_int4, self.group_size, self.scales_and_zeros)
        return aten._weight_int4pack_mm_for_cpu(x, self.weight_int4, self.group_size, self.scales_and_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)                                  # (M, K)
        x2 = x2.to(torch.bfloat16) if x2.dtype != torch.bfloat16 else x2
        y = self._matmul(x2 if x2.is_contiguous() else x2.contiguous())        # (M, N)
        if self.bias is not None:
            y = y + self.bias
        y = y.view(*x.shape[:-1], self.out_features)
        return y.to(x.dtype) if x.dtype != torch.bfloat16 else y

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}{group}"


# ------------------------------------------------------------------ swapping a model's layers
class _Quantizer:
    """Turns float weights into QuantizedLinear layers, remembering which ones fell back to int8."""

    def __init__(self, bits: int, group_size: int | None, strict: bool):
        self.bits, self.group_size, self.strict = bits, group_size or DEFAULT_GROUP_SIZE, strict
        self.fallbacks: list[str] = []

    def __call__(self, name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> QuantizedLinear:
        if self.bits == 8:
            return QuantizedLinear(weight, bias, 8)
        N, K = weight.shape
        problem = int4_problem(N, K, self.group_size, weight.device)
        if problem is None:
            return QuantizedLinear(weight, bias, 4, self.group_size)
        if self.strict:
            raise ValueError(f"int4 cannot quantize {name} ({N} x {K}): {problem}; "
                             "pick another group_size, or strict=False to fall back to int8 for such layers")
        self.fallbacks.append(f"{name} ({problem})")
        return QuantizedLinear(weight, bias, 8)



@torch.no_grad()
def quantize_model(model, mode: str = "int8", group_size: int | None = None, strict: bool = False,
                   quantize_head: bool = True):
    """Swap the model's Linear layers for QuantizedLinear in place; returns the model (in eval mode).

    mode: "int8", "int4" or "int4-g<size>". group_size (int4): 32 (the default), 64, 128 or 256.
    32 costs 1 bit per weight more than 128 (a bf16 scale and zero per group) and is much more
    accurate; on SmolLM2, whose weights come from a Q4_1 file (groups of 32), it reproduces the
    file's 4-bit grid, where 64 and 128 quadruple the logit error (benchmarks/RESULTS.md).
    strict: raise instead of falling back to int8 for a layer int4 cannot take.
    """
    if getattr(model, "quantization", None):
        raise ValueError(f"the model is already quantized ({model.quantization})")
    bits, group_size = parse_mode(mode, group_size)
    quantize = _Quantizer(bits, group_size, strict)
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
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()
