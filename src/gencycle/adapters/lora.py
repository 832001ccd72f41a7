"""LoRA: low-rank adapters on frozen Linear layers (Hu et al., 2021).

    y = W x + b  +  (alpha / r) * B A dropout(x)        A: (r, in), B: (out, r)

`apply_lora(model, rank, alpha, dropout, target_modules)` swaps the chosen
`nn.Linear` modules for `LoRALinear` in place and freezes everything else. A
`LoRALinear` is still an `nn.Linear` with the same `weight` / `bias`, so the
model's weight names do not change; the adapter adds `<module>.lora_A.weight`
and `<module>.lora_B.weight`, the suffixes PEFT uses. B starts at zero, so a
fresh adapter leaves the model's output unchanged.

`with disable_adapters(model):` runs the base model (PPO's frozen reference is the
policy with its adapters off), with or without gradients.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..model.fusion import unfuse_projections

# Short names for groups of targets (gencycle's module names; see HELPERS / model/layers.py).
TARGET_GROUPS = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}


class LoRALinear(nn.Linear):
    """An `nn.Linear` (its weight frozen) plus a trainable low-rank update B @ A.

    Shares `weight` and `bias` with the layer it replaces. `scaling` is
    alpha / rank (alpha / sqrt(rank) with rsLoRA).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False):
        nn.Module.__init__(self)
        if rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, **factory)   # kaiming-uniform (a=sqrt 5)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, **factory)
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.rank, self.alpha, self.dropout_p, self.use_rslora = rank, alpha, dropout, use_rslora
        self.scaling = alpha / math.sqrt(rank) if use_rslora else alpha / rank
        self.merged = False
        self.disabled = False  # True: the base layer's output only (disable_adapters)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A: (out, in), computed in fp32."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in) -> (..., out)
        out = F.linear(x, self.weight, self.bias)
        if self.merged or self.disabled:
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold B @ A into the weight (inference: no extra matmuls). Idempotent."""
        if self.disabled:
            raise ValueError("cannot merge a LoRA layer while its adapter is disabled (disable_adapters)")
        if not self.merged:
            self.weight.copy_((self.weight.float() + self.delta_weight()).to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take B @ A back out of the weight. Idempotent."""
        if self.merged:
            self.weight.copy_((self.weight.float() - self.delta_weight()).to(self.weight.dtype))
            self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain `nn.Linear` with the merged weight (the adapter baked in)."""
        self.merge()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        linear.weight, linear.bias = self.weight, self.bias
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha}, dropout={self.dropout_p}, merged={self.merged}")


# ------------------------------------------------------------------ choosing modules
def hf_module_names(model: nn.Module) -> dict[str, str]:
    """gencycle module path -> Hugging Face module path, for models of a family with a HF layout."""
    config = getattr(model, "config", None)
    from ..checkpoints import FAMILY_MODULE
    from ..checkpoints.names import rename
    family = FAMILY_MODULE.get(getattr(config, "family", None))
    if family is None:
        return {}
    table = family.table(config)
    return {name: hf for name, _ in model.named_modules() if name and (hf := rename(name, table, to_hf=True))}


def _matches(name: str, targets: str | Iterable[str]) -> bool:
    """PEFT's rule: a string is a regex that must match the whole name; a list entry matches a
    whole name or its last dotted components ("q_proj" matches "decoder.layers.0.self_attn.q_proj")."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def find_targets(model: nn.Module, target_modules: str | Iterable[str]) -> list[str]:
    """Names of the `nn.Linear` modules chosen by `target_modules`.

    Entries are matched against gencycle's module names and against the family's
    Hugging Face names (so PEFT-style targets such as "q", "v" for T5 work too).
    Group names: "attention", "mlp", "all-linear". A tied output head is never chosen
    by a group.
    """
    if isinstance(target_modules, str) and target_modules in TARGET_GROUPS:
        target_modules = [target_modules]
    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
        if not target_modules:
            raise ValueError("target_modules is empty; name the Linear modules to adapt, e.g. q_proj, v_proj")
        expanded = []
        for t in target_modules:
            expanded += TARGET_GROUPS.get(t, (t,))
        target_modules = expanded
    hf = hf_module_names(model)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)]
    chosen = [n for n in linears if _matches(n, target_modules) or (n in hf and _matches(hf[n], target_modules))]
    if not chosen:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in linears})
        examples = [n for n in linears if ".0." in n][:4] or linears[:4]
        raise ValueError(f"target_modules {target_modules!r} matched no Linear module of the model; "
                         f"Linear modules are named like {', '.join(examples)} (last parts: {', '.join(leaves)})")
    return chosen


# ------------------------------------------------------------------ whole-model operations
def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def add_lora(model: nn.Module, names: Iterable[str], rank: int | dict[str, int], alpha: float | dict[str, float],
             dropout: float = 0.0, use_rslora: bool = False) -> None:
    """Swap the named Linear modules for LoRALinear (rank / alpha may be per-module dicts).

    Projections fused for inference (q|k|v, gate|up) are split back first: adapters sit on the
    separate layers, under the names PEFT uses."""
    unfuse_projections(model)
    config = getattr(model, "config", None)
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear) or isinstance(module, LoRALinear):
            raise ValueError(f"module {name!r} is not a plain nn.Linear ({type(module).__name__}); cannot add LoRA")
        if name == "lm_head" and getattr(config, "tie_embeddings", False):
            raise ValueError("lm_head shares its weight with embed_tokens (tied embeddings); LoRA on it is "
                             "not supported — target other modules")
        r = rank[name] if isinstance(rank, dict) else rank
        a = alpha[name] if isinstance(alpha, dict) else alpha
        layer = LoRALinear(module, r, a, dropout, use_rslora)
        _set_module(model, name, layer.train(module.training))  # a new module would start in train mode


def freeze_all_but(model: nn.Module, keep) -> None:
    """requires_grad only for parameters whose name satisfies keep(name)."""
    for name, param in model.named_parameters():
        param.requires_grad_(keep(name))


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16, dropout: float = 0.0,
               target_modules: str | Iterable[str] = ("q_proj", "v_proj"), use_rslora: bool = False) -> nn.Module:
    """Add LoRA adapters to the target Linear modules, in place; freeze every other parameter.

    Returns the model. target_modules: list of module-name suffixes ("q_proj",
    "self_attn.o_proj", HF names such as "q"), group names ("attention", "mlp",
    "all-linear"), or one regex string matched against whole module names.
    """
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    if lora_layers(model):
        raise ValueError("the model already has LoRA adapters; merge_lora(model, unload=True) them first")
    unfuse_projections(model)  # targets are the separate q / k / v and gate / up layers
    add_lora(model, find_targets(model, target_modules), rank, alpha, dropout, use_rslora)
    freeze_all_but(model, lambda n: ".lora_A." in n or ".lora_B." in n)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter's tensors, under gencycle's names (`...q_proj.lora_A.weight`)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def merge_lora(model: nn.Module, unload: bool = False) -> nn.Module:
    """Fold every adapter into its weight. unload=True also turns LoRALinear back into nn.Linear
    (what `gencycle merge` saves); otherwise `unmerge_lora` can undo it."""
    for name, layer in lora_layers(model).items():
        if unload:
            _set_module(model, name, layer.to_linear())
        else:
            layer.merge()
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Inside `with disable_adapters(model):` every LoRALinear computes its base layer only, so the
    model is the one the adapters were added to; on exit (an exception too) each layer is as before.

    Only a flag per layer changes: no weight is touched, so a policy's pending backward, another
    model sharing the weights, and nested uses are all safe, under torch.no_grad or with gradients.
    Merged layers are refused (their weight holds the adapter: unmerge_lora first), and so is a
    model without adapters (a reference equal to the policy would be a silent mistake). The switch
    is the model's, not the thread's: do not run the adapted model concurrently meanwhile.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to disable; use a frozen copy of it as the reference")
    if getattr(model, "compiled_decoding", None) is not None:
        raise ValueError("compile_decoding froze this model's adapters into its compiled steps, which would "
                         "not see them disabled; disable adapters on a model that is not compiled")
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise ValueError(f"{len(merged)} LoRA layer(s) are merged into their weights ({merged[0]}, ...); "
                         "call unmerge_lora(model) before disable_adapters")
    before = {name: layer.disabled for name, layer in layers.items()}
    for layer in layers.values():
        layer.disabled = True
    try:
        yield model
    finally:
        for name, layer in layers.items():
            layer.disabled = before[name]


def unmerge_lora(model: nn.Module) -> nn.Module:
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, tied matrices counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
