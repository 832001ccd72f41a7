"""Compute and memory from a `ModelConfig` alone: parameters, memory, FLOPs, scaling laws.

Pure arithmetic, no tensors: it answers "will it fit, how long will it take, how big should
it be" before anything is built. Bytes are plain bytes; FLOPs count a multiply-add as two.

Sources of the formulas:
- parameters: counted layer by layer exactly as `Transformer` builds them (a tied matrix once).
- model states in training: mixed-precision Adam as in the ZeRO paper (Rajbhandari et al. 2020,
  section 3.1): 2 bytes of 16-bit weights + 2 of gradients + K = 12 of fp32 master weights,
  momentum and variance per parameter; stage 1 shards the K bytes over the devices, stage 2
  also the gradients, stage 3 (and PyTorch FSDP's full sharding) also the weights. fp32
  training keeps 4 + 4 + 8 bytes (no master copy).
- activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models", without tensor or sequence parallelism: per layer s*b*h*(34 + 5*a*s/h) bytes in 16-bit
  with no recomputation; 34*s*b*h with selective recomputation (the attention scores and softmax
  recomputed, which is also what a fused attention kernel such as SDPA's flash path stores);
  2*s*b*h with full checkpointing (only each layer's input kept; the one layer being recomputed
  in the backward pass is not included). Their output-layer term 4*s*b*h + 4*s*b*v (fp32 logits
  for the cross-entropy) is added once. The per-layer coefficients assume multi-head attention
  and a 4h feed-forward; fp32 activations are counted at twice the 16-bit figure.
- training FLOPs: 6*N*D (Kaplan et al. 2020) plus the attention scores and their weighted sum,
  12 * layers * heads * head_dim * seq per token (PaLM, Chowdhery et al. 2022, appendix B).
- compute-optimal size: Hoffmann et al. 2022 (Chinchilla), the approach-3 fit
  L(N, D) = E + A / N^alpha + B / D^beta minimised under C = 6*N*D, and the ~20 tokens per
  parameter rule.
"""

from __future__ import annotations

import math

from .model.config import ModelConfig

BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "int8": 1, "int4": 0.5}
TRAINING_DTYPES = ("fp32", "bf16", "fp16")
SHARDINGS = {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}  # name -> ZeRO stage
RECOMPUTATION = ("none", "selective", "full")
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # Hoffmann et al. 2022, eq. 10
TOKENS_PER_PARAMETER = 20
DEFAULT_PEAK_TFLOPS = 312.0  # an A100's dense bf16 peak
DEFAULT_MFU = 0.4


# ---------------------------------------------------------------- published shapes
def published_shapes() -> dict[str, ModelConfig]:
    """Configs of published models too large to build here, for `gencycle estimate NAME`: only
    their shapes (no weights), from the papers' tables."""
    from .model.config import preset
    return {
        # Touvron et al. 2023 (Llama 2), table 1 and the released config.json: 6,738,415,616 parameters
        "llama2-7b": ModelConfig(family="llama", vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
                                 intermediate_size=11008, max_position_embeddings=4096, position="rope",
                                 norm="rmsnorm", activation="silu", gated_mlp=True, norm_bias=False,
                                 tie_embeddings=False),
        # Brown et al. 2020 (GPT-3), table 2.1: 96 layers, d_model 12288, 96 heads, context 2048
        "gpt3-175b": preset("gpt2-124m", num_layers=96, hidden_size=12288, num_heads=96,
                            intermediate_size=4 * 12288, max_position_embeddings=2048),
    }


# ---------------------------------------------------------------- checks
def check_config(config: ModelConfig) -> None:
    """Raise ValueError for a config no transformer can be built from."""
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}")
    C, H = config.hidden_size, config.num_heads
    if C % H and config.head_dim == C // H:  # head_dim was derived, and the division truncated
        raise ValueError(f"hidden_size {C} is not divisible by num_heads {H}; "
                         "pick sizes that divide, or give head_dim explicitly")


def _positive(**values) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


def _bytes(dtype: str) -> float:
    if dtype not in BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(BYTES)}")
    return BYTES[dtype]


def _stage(sharding: str) -> int:
    if sharding not in SHARDINGS:
        raise ValueError(f"unknown sharding {sharding!r}; use one of {', '.join(SHARDINGS)}")
    return SHARDINGS[sharding]


def _stacks(config: ModelConfig) -> list[tuple[int, bool]]:
    """(layers, has cross-attention) per stack."""
    if config.architecture == "encoder-decoder":
        return [(config.num_encoder_layers, False), (config.num_layers, True)]
    return [(config.num_layers, False)]


# ---------------------------------------------------------------- parameters
def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def parameter_breakdown(config: ModelConfig) -> dict[str, int]:
    """Parameters by part, as `Transformer(config)` holds them; the values sum to its count."""
    check_config(config)
    c = config
    C, V, H, Hkv, D, F = c.hidden_size, c.vocab_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size
    norm = C * (2 if c.norm == "layernorm" and c.norm_bias else 1)
    attention = (_linear(C, H * D, c.qkv_bias) + 2 * _linear(C, Hkv * D, c.qkv_bias)
                 + _linear(H * D, C, c.attn_out_bias))
    feed_forward = (2 if c.gated_mlp else 1) * _linear(C, F, c.mlp_bias) + _linear(F, C, c.mlp_bias)
    parts = {"embeddings": V * C + (c.max_position_embeddings * C if c.position == "learned" else 0)
             + c.type_vocab_size * C, "attention": 0, "feed_forward": 0,
             "norms": norm if c.embedding_norm else 0, "heads": 0}
    for layers, cross in _stacks(c):
        parts["attention"] += layers * (2 if cross else 1) * attention
        parts["attention"] += c.relative_buckets * H if c.position == "relative" else 0
        parts["feed_forward"] += layers * feed_forward
        parts["norms"] += layers * (3 if cross else 2) * norm + (norm if c.pre_norm else 0)
    if c.mlm_head:  # dense -> act -> norm before the vocabulary projection
        parts["heads"] += _linear(C, C, True) + norm
    if c.has_decoder or c.mlm_head:
        parts["heads"] += (0 if c.tie_embeddings else V * C) + (V if c.lm_head_bias or c.mlm_head else 0)
    if c.pooler:
        parts["heads"] += _linear(C, C, True)
    return parts


def num_parameters(config: ModelConfig) -> int:
    """Exactly `Transformer(config).num_parameters()`, without building it."""
    return sum(parameter_breakdown(config).values())


# ---------------------------------------------------------------- inference memory
def weight_bytes(num_params: int, dtype: str) -> float:
    """Weights at a uniform width (int8 / int4 without their quantization scales)."""
    return num_params * _bytes(dtype)


def kv_cache_bytes(config: ModelConfig, tokens: int = 1, batch: int = 1, dtype: str = "bf16") -> float:
    """Keys and values kept for `batch` sequences of `tokens` tokens: 2 * layers * kv_heads * head_dim
    values per token. An encoder-decoder also keeps the cross-attention keys and values of a source
    of the same length; an encoder-only model keeps none."""
    check_config(config)
    _positive(tokens=tokens, batch=batch)
    if not config.has_decoder:
        return 0
    per_layer = 2 * config.num_kv_heads * config.head_dim * (2 if config.has_encoder else 1)
    return config.num_layers * per_layer * tokens * batch * _bytes(dtype)


# ---------------------------------------------------------------- training memory
def model_state_bytes(num_params: int, devices: int = 1, sharding: str = "none", dtype: str = "bf16") -> dict:
    """Per-device bytes of weights, gradients, Adam moments and fp32 master weights (ZeRO, 3.1)."""
    stage = _stage(sharding)
    _positive(num_params=num_params, devices=devices)
    if dtype not in TRAINING_DTYPES:
        raise ValueError(f"training dtype must be one of {', '.join(TRAINING_DTYPES)}, got {dtype!r}")
    width, master = (4, 0) if dtype == "fp32" else (2, 4)

    def share(bytes_per_param: float, from_stage: int) -> float:
        return num_params * bytes_per_param / (devices if stage >= from_stage else 1)

    states = {"weights": share(width, 3), "gradients": share(width, 2),
              "adam_moments": share(8, 1), "master_weights": share(master, 1)}
    return {**states, "total": sum(states.values())}


def activation_bytes(config: ModelConfig, batch: int, seq: int, recompute: str = "none",
                     dtype: str = "bf16") -> float:
    """Activations kept for the backward pass on one device (Korthikanti et al. 2022, see above)."""
    check_config(config)
    _positive(batch=batch, seq=seq)
    if recompute not in RECOMPUTATION:
        raise ValueError(f"unknown recomputation {recompute!r}; use one of {', '.join(RECOMPUTATION)}")
    s, b, h, a = seq, batch, config.hidden_size, config.num_heads
    per_layer = {"none": s * b * (34 * h + 5 * a * s), "selective": 34 * s * b * h, "full": 2 * s * b * h}[recompute]
    layers = sum(n for n, _ in _stacks(config))
    logits = 4 * s * b * config.vocab_size if config.has_decoder or config.mlm_head else 0
    return (layers * per_layer + 4 * s * b * h) * _bytes(dtype) / 2 + logits


def training_memory(config: ModelConfig, batch: int = 1, seq: int | None = None, devices: int = 1,
                    sharding: str = "none", dtype: str = "bf16") -> dict:
    """Per-device model states plus activations; `batch` is the micro-batch of one device."""
    seq = seq or config.max_position_embeddings
    states = model_state_bytes(num_parameters(config), devices, sharding, dtype)
    activations = {r: activation_bytes(config, batch, seq, r, dtype) for r in RECOMPUTATION}
    return {"model_states": states, "activations": activations,
            "total": {r: states["total"] + act for r, act in activations.items()}}


# ---------------------------------------------------------------- FLOPs and time
def training_flops(config: ModelConfig, tokens: int, seq: int | None = None) -> dict:
    """6*N*D for the matmuls over the weights, plus 12*L*H*Dh*T per token for attention (PaLM)."""
    _positive(tokens=tokens, seq=seq)
    n, seq = num_parameters(config), seq or config.max_position_embeddings
    attention_layers = sum(n_layers * (2 if cross else 1) for n_layers, cross in _stacks(config))
    dense = 6 * n * tokens
    attention = 12 * attention_layers * config.num_heads * config.head_dim * seq * tokens
    return {"dense": dense, "attention": attention, "total": dense + attention}


def pf_days(flops: float) -> float:
    """Petaflop/s-days: 1e15 FLOP/s sustained for a day."""
    return flops / (1e15 * 86400)


def training_seconds(flops: float, devices: int = 1, peak_tflops: float = DEFAULT_PEAK_TFLOPS,
                     mfu: float = DEFAULT_MFU) -> float:
    """Wall-clock seconds at `mfu` (model FLOPs utilisation, 0..1] of each device's peak."""
    _positive(devices=devices, peak_tflops=peak_tflops, mfu=mfu)
    if mfu > 1:
        raise ValueError(f"mfu is a fraction of the peak, in (0, 1]; got {mfu}")
    return flops / (devices * peak_tflops * 1e12 * mfu)


# ---------------------------------------------------------------- scaling laws
def chinchilla_loss(params: float, tokens: float) -> float:
    """Predicted loss L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla approach 3)."""
    _positive(params=params, tokens=tokens)
    k = CHINCHILLA
    return k["E"] + k["A"] / params ** k["alpha"] + k["B"] / tokens ** k["beta"]


def compute_optimal(budget: float) -> dict:
    """The split of `budget` FLOPs (C = 6*N*D) into parameters and tokens: approach 3's minimum,
    N = G (C/6)^a, D = (C/6)^b / G with a = beta/(alpha+beta), b = alpha/(alpha+beta),
    G = (alpha A / (beta B))^(1/(alpha+beta)); and the 20 tokens per parameter rule."""
    _positive(budget=budget)
    k = CHINCHILLA
    total = k["alpha"] + k["beta"]
    G = (k["alpha"] * k["A"] / (k["beta"] * k["B"])) ** (1 / total)
    n3 = G * (budget / 6) ** (k["beta"] / total)
    n20 = math.sqrt(budget / (6 * TOKENS_PER_PARAMETER))
    split = {"approach_3": (n3, budget / (6 * n3)), "tokens_per_parameter_20": (n20, TOKENS_PER_PARAMETER * n20)}
    return {name: {"params": n, "tokens": d, "loss": chinchilla_loss(n, d)} for name, (n, d) in split.items()}


# ---------------------------------------------------------------- everything at once
def estimate(config: ModelConfig, tokens: int | None = None, batch: int = 1, seq: int | None = None,
             devices: int = 1, sharding: str = "none", dtype: str = "bf16",
             peak_tflops: float = DEFAULT_PEAK_TFLOPS, mfu: float = DEFAULT_MFU,
             budget: float | None = None) -> dict:
    """The whole report `gencycle estimate` prints. `tokens` defaults to 20 per parameter, `seq` to
    the context window, `budget` (FLOPs for the compute-optimal split) to this run's 6*N*D."""
    _positive(tokens=tokens, batch=batch, seq=seq, devices=devices, budget=budget)
    _stage(sharding)
    breakdown = parameter_breakdown(config)
    n = sum(breakdown.values())
    tokens = tokens or TOKENS_PER_PARAMETER * n
    seq = seq or config.max_position_embeddings
    flops = training_flops(config, tokens, seq)
    seconds = training_seconds(flops["total"], devices, peak_tflops, mfu)
    return {
        "parameters": {**breakdown, "total": n},
        "inference": {"weights": {d: weight_bytes(n, d) for d in ("fp32", "bf16", "int8", "int4")},
                      "kv_cache_dtype": dtype, "kv_cache_per_token": kv_cache_bytes(config, 1, 1, dtype),
                      "kv_cache": kv_cache_bytes(config, seq, batch, dtype), "batch": batch, "seq": seq},
        "training": {"devices": devices, "sharding": sharding, "dtype": dtype, "batch_per_device": batch,
                     "seq": seq, **training_memory(config, batch, seq, devices, sharding, dtype)},
        "flops": {"tokens": tokens, **flops, "pf_days": pf_days(flops["total"]), "devices": devices,
                  "peak_tflops": peak_tflops, "mfu": mfu, "seconds": seconds, "days": seconds / 86400},
        "compute_optimal": {"budget": budget or flops["dense"], **compute_optimal(budget or flops["dense"]),
                            "this_run": {"params": n, "tokens": tokens, "loss": chinchilla_loss(n, tokens)}},
    }
