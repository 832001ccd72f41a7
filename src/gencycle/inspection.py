"""Looking inside a model: its card (size, shape, memory) and its attention maps.

A heatmap's side grows with the number of tokens, and the figure's pixels with its square (120
tokens made a 15444 x 11583 PNG that took 2.5 GB), so `plot_attention` draws at most
MAX_DRAWN_TOKENS tokens, the first ones, and says so in the title; `attention_maps(max_tokens=)`
runs a decoder on those tokens only (exact: a causal model's first tokens never see the later ones).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .model.transformer import Transformer

BYTES_PER_PARAMETER = {"fp32": 4, "bf16": 2, "int8": 1}
MAX_DRAWN_TOKENS = 48  # per heatmap side: 4 heads across at 110 dpi stay under ~7000 x 5000 pixels
IMAGE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "webp", "tif", "tiff", "eps", "ps")


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
def attention_maps(model: Transformer, tokenizer, text: str | list[int], layer: int,
                   max_tokens: int | None = None) -> tuple[list[str], torch.Tensor]:
    """Tokens of `text` and the attention weights (heads, T, T) of one layer (the model's main stack).
    `text` may also be token ids (a prompt tokenized already, such as a chat-templated one).
    max_tokens: keep the first ones only; a decoder runs on them alone (the same weights, since it is
    causal), an encoder on the whole text, its maps cropped (their rows then sum to less than 1)."""
    cfg = model.config
    n_layers = cfg.num_layers if cfg.architecture != "encoder-decoder" else cfg.num_encoder_layers
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    ids = tokenizer.encode(text) if isinstance(text, str) else list(text)
    if not ids:
        raise ValueError("the text has no tokens to draw")
    crop = max_tokens if max_tokens is not None and len(ids) > max_tokens else None
    if crop is not None and cfg.architecture == "decoder":
        ids = ids[:crop]
    ids = torch.tensor([ids], device=model.device)
    if cfg.architecture == "encoder-decoder":  # look at the encoder's self-attention
        _, attentions = model.encode(ids, return_attentions=True)
    else:
        attentions = model(ids, return_attentions=True).attentions
    tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
    weights = attentions[layer][0].float().cpu()
    if crop is not None:
        tokens, weights = tokens[:crop], weights[:, :crop, :crop]
    return tokens, weights


def image_path(path: str | Path) -> Path:
    """The file an image is written to: `path`, with .png added when it has no suffix (matplotlib
    would add it silently); a suffix matplotlib cannot write is a ValueError."""
    path = Path(path)
    if not path.suffix:
        return path.with_name(path.name + ".png")
    if path.suffix.lower().lstrip(".") not in IMAGE_FORMATS:
        raise ValueError(f"{str(path)!r}: cannot write a {path.suffix} image; use one of "
                         f"{', '.join('.' + f for f in IMAGE_FORMATS)}")
    return path


def plot_attention(tokens: list[str], weights: torch.Tensor, path: str | Path, title: str = "",
                   heads: list[int] | None = None, max_tokens: int = MAX_DRAWN_TOKENS) -> Path:
    """One heatmap per head, queries down and keys across, tokens on both axes; returns the file
    written (see `image_path`). At most `max_tokens` tokens are drawn, the first ones (the title says so)."""
    from matplotlib.figure import Figure  # no pyplot: the global backend (a notebook's) stays as it is

    path = image_path(path)
    n_heads = weights.shape[0]
    heads = list(range(n_heads)) if heads is None else list(heads)
    bad = [h for h in heads if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < n_heads]
    if bad or not heads:
        raise ValueError(f"heads must be in 0..{n_heads - 1} (the layer has {n_heads} attention heads), "
                         f"got {bad or heads}")
    if len(tokens) > max_tokens:
        title = f"{title}{', ' if title else ''}first {max_tokens} of {len(tokens)} tokens"
        tokens, weights = tokens[:max_tokens], weights[:, :max_tokens, :max_tokens]
    cols = min(len(heads), 4)
    rows = math.ceil(len(heads) / cols)
    size = max(3.0, 0.28 * len(tokens) + 1.5)
    fig = Figure(figsize=(cols * size, rows * size))
    axes = fig.subplots(rows, cols, squeeze=False)
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
    return path
