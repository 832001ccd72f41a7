"""Looking inside a model: its card (size, shape, memory) and its attention maps."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .model.transformer import Transformer

BYTES_PER_PARAMETER = {"fp32": 4, "bf16": 2, "int8": 1}


def model_card(model: Transformer) -> dict:
    """Family, shape, context window, parameter count and weight memory of a model."""
    cfg = model.config
    n = model.num_parameters()
    card = {
        "family": cfg.family,
        "architecture": cfg.architecture,
        "layers": cfg.num_layers if cfg.architecture != "encoder-decoder"
        else f"{cfg.num_encoder_layers} encoder + {cfg.num_layers} decoder",
        "attention heads": cfg.num_heads if cfg.num_kv_heads == cfg.num_heads
        else f"{cfg.num_heads} query / {cfg.num_kv_heads} key-value (grouped-query)",
        "hidden size": cfg.hidden_size,
        "feed-forward size": cfg.intermediate_size,
        "vocabulary": cfg.vocab_size,
        "positions": cfg.position + (f" (theta {cfg.rope_theta:g})" if cfg.position == "rope" else ""),
        "context window": cfg.max_position_embeddings if cfg.position != "relative" else "unbounded (relative positions)",
        "parameters": n,
    }
    for dtype, size in BYTES_PER_PARAMETER.items():
        card[f"weights in {dtype}"] = format_bytes(n * size)
    return card


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


def format_card(card: dict) -> str:
    width = max(len(k) for k in card)
    lines = []
    for key, value in card.items():
        if key == "parameters":
            value = f"{value:,} ({value / 1e6:.1f} M)"
        lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines)


@torch.no_grad()
def attention_maps(model: Transformer, tokenizer, text: str | list[int], layer: int) -> tuple[list[str], torch.Tensor]:
    """Tokens of `text` and the attention weights (heads, T, T) of one layer (the model's main stack).
    `text` may also be token ids (a prompt tokenized already, such as a chat-templated one)."""
    cfg = model.config
    n_layers = cfg.num_layers if cfg.architecture != "encoder-decoder" else cfg.num_encoder_layers
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    ids = torch.tensor([tokenizer.encode(text) if isinstance(text, str) else list(text)], device=model.device)
    if cfg.architecture == "encoder-decoder":  # look at the encoder's self-attention
        _, attentions = model.encode(ids, return_attentions=True)
    else:
        attentions = model(ids, return_attentions=True).attentions
    tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
    return tokens, attentions[layer][0].float().cpu()


def plot_attention(tokens: list[str], weights: torch.Tensor, path: str | Path, title: str = "",
                   heads: list[int] | None = None) -> Path:
    """One heatmap per head, queries down and keys across, tokens on both axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = list(range(weights.shape[0])) if heads is None else heads
    cols = min(len(heads), 4)
    rows = math.ceil(len(heads) / cols)
    size = max(3.0, 0.28 * len(tokens) + 1.5)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    labels = [repr(t)[1:-1] for t in tokens]
    for ax in axes.flat[len(heads):]:
        ax.axis("off")
    for ax, head in zip(axes.flat, heads):
        ax.imshow(weights[head].numpy(), cmap="viridis", vmin=0.0)
        ax.set_title(f"head {head}", fontsize=10)
        ax.set_xticks(range(len(tokens)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), labels, fontsize=7)
        ax.set_xlabel("key (attended to)", fontsize=8)
        ax.set_ylabel("query", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
