"""Fused projections for inference: q|k|v and gate|up as one Linear layer each.

    fuse_for_inference(model)    # model.fuse_projections() does the same; compile_decoding and quantize_model call it
    unfuse_projections(model)    # back to separate layers (e.g. to add LoRA adapters to q_proj / v_proj)

Self-attention's q_proj, k_proj and v_proj read the same input, as do a gated MLP's gate_proj and
up_proj. Fusing stacks each group's weights as row blocks of one `FusedLinear` (`qkv_proj`,
`gate_up_proj`), so a forward pass runs one matmul where it ran three or two: fewer kernel launches
per decoding step, and one QuantizedLinear per group after quantization. The numbers do not change
(each output row is the same dot product). The weights move into the fused tensor; no copy stays.

A fused model is an ordinary module: `.to()`, deep copies, gradients and optimizers see the fused
Parameter like any other. Only the file names keep the separate layers: `state_dict()` gives each
block under its own layer's name (`...self_attn.q_proj.weight`, a view of the fused rows), and
`load_state_dict` joins those names again, so save_pretrained, training checkpoints and the Hugging
Face round trip are the same as without fusing. Module names do change (LoRA targets `q_proj`, not
`qkv_proj`): `unfuse_projections` first. Groups holding anything but plain nn.Linear layers (a LoRA
layer, a quantized one) stay as they are; so does cross-attention (its k and v read the encoder).
"""

from __future__ import annotations

import torch
from torch import nn


class FusedLinear(nn.Linear):
    """nn.Linear layers that read one input, as row blocks of one weight (sum of out_features, in_features).

    `names` and `sizes`: the layers it stands for (its siblings' names in the parent module) and
    their out_features; its output (..., sum of sizes) splits into theirs along the last dimension.
    """

    def __init__(self, names: tuple[str, ...], layers: list[nn.Linear]):
        nn.Module.__init__(self)
        self.names, self.sizes = tuple(names), tuple(layer.out_features for layer in layers)
        self.in_features, self.out_features = layers[0].in_features, sum(self.sizes)
        trainable = any(layer.weight.requires_grad for layer in layers)
        with torch.no_grad():
            self.weight = nn.Parameter(torch.cat([layer.weight for layer in layers]), requires_grad=trainable)
            bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])
            self.register_parameter("bias", None if bias is None else nn.Parameter(bias, requires_grad=trainable))

    def _blocks(self, tensor: torch.Tensor | None) -> list:
        return [None] * len(self.names) if tensor is None else list(tensor.split(self.sizes))

    def split(self) -> list[nn.Linear]:
        """The separate layers again (copies of the blocks)."""
        layers = []
        for w, b in zip(self._blocks(self.weight), self._blocks(self.bias)):
            layer = nn.Linear(self.in_features, w.shape[0], bias=b is not None, device="meta")
            layer.weight = nn.Parameter(w.detach().clone(), requires_grad=self.weight.requires_grad)
            if b is not None:
                layer.bias = nn.Parameter(b.detach().clone(), requires_grad=self.weight.requires_grad)
            layers.append(layer.train(self.training))
        return layers

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """Each block under its own layer's name, next to this module in the parent."""
        parent = _parent(prefix)
        for name, w, b in zip(self.names, self._blocks(self.weight), self._blocks(self.bias)):
            destination[f"{parent}{name}.weight"] = w if keep_vars else w.detach()
            if b is not None:
                destination[f"{parent}{name}.bias"] = b if keep_vars else b.detach()

    def join_names(self, state_dict: dict, parent: str, own_name: str) -> None:
        """Rename the separate layers' entries of a state_dict (under `parent`) to this layer's."""
        for kind in ("weight", "bias"):
            keys = [f"{parent}{name}.{kind}" for name in self.names]
            if getattr(self, kind) is not None and all(key in state_dict for key in keys):
                state_dict[f"{parent}{own_name}.{kind}"] = torch.cat([state_dict.pop(key) for key in keys])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fuses={'|'.join(self.names)}"


def _parent(prefix: str) -> str:
    """"decoder.layers.0.self_attn.qkv_proj." -> "decoder.layers.0.self_attn."."""
    head = prefix[:-1].rpartition(".")[0]
    return head + "." if head else ""


class FusedNames:
    """Mixin for a module whose Linear children can be fused: `fusable()` names the groups
    (fused child's name -> the layers' names), and loading a state_dict that names the layers
    separately into a fused module joins them (torch hands a child only the keys under its own name)."""

    def fusable(self) -> dict[str, tuple[str, ...]]:
        return {}

    def _load_from_state_dict(self, state_dict, prefix, *args):
        for fused_name in self.fusable():
            fused = self._modules.get(fused_name)
            if isinstance(fused, FusedLinear):
                fused.join_names(state_dict, prefix, fused_name)  # load_state_dict's own copy of the dict
        super()._load_from_state_dict(state_dict, prefix, *args)


def _swap(module: nn.Module, old: tuple[str, ...], new: dict[str, nn.Module]) -> None:
    """Replace children `old` by `new`, at the place of the first old one (state_dict keeps its
    order); the old names stay attributes that read None."""
    children = list(module._modules.items())
    module._modules.clear()
    for name, child in children:
        if name == old[0]:
            module._modules.update(new)
        elif name not in old:
            module._modules[name] = child
    for name in new:
        module.__dict__.pop(name, None)  # a plain `None` attribute set in __init__ would hide the child
    for name in old:
        module.__dict__[name] = None


def _fusable(layers: list) -> bool:
    first = layers[0]
    return all(type(layer) is nn.Linear and layer.weight.dtype == first.weight.dtype
               and layer.weight.device == first.weight.device and (layer.bias is None) == (first.bias is None)
               for layer in layers)


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fuse every group of plain nn.Linear layers that read one input (q|k|v, gate|up) into a
    FusedLinear, in place; returns the model. Fusing twice changes nothing."""
    with torch.inference_mode(False):  # fused weights stay ordinary tensors (trainable, versioned)
        for module in list(model.modules()):
            if isinstance(module, FusedNames):
                for fused_name, names in module.fusable().items():
                    layers = [module._modules.get(name) for name in names]
                    if _fusable(layers):
                        _swap(module, names, {fused_name: FusedLinear(names, layers).train(layers[0].training)})
    return model


def unfuse_projections(model: nn.Module) -> nn.Module:
    """Split every FusedLinear back into its separate nn.Linear layers, in place; returns the model."""
    with torch.inference_mode(False):
        for module in list(model.modules()):
            if isinstance(module, FusedNames):
                for fused_name in module.fusable():
                    fused = module._modules.get(fused_name)
                    if isinstance(fused, FusedLinear):
                        _swap(module, (fused_name,), dict(zip(fused.names, fused.split())))
    return model
