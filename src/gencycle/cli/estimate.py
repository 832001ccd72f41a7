"""`gencycle estimate MODEL`: parameters, memory, FLOPs, time and the compute-optimal size.

MODEL is a preset name, a packaged model, a model folder (its config.json), a `.gguf` file
(its metadata) or a config `.json` (gencycle's or Hugging Face's); no weights are read.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import compute
from .options import number


def register(subparsers) -> None:
    p = subparsers.add_parser("estimate", help="parameters, memory, training FLOPs and time, compute-optimal size")
    p.add_argument("model", help="preset name (also llama2-7b, gpt3-175b: published shapes), packaged model, "
                   "model folder, .gguf file or config .json")
    p.add_argument("--tokens", type=count, help="training tokens (default: 20 per parameter)")
    p.add_argument("--batch", type=count, default=1, help="micro-batch per device (default: 1)")
    p.add_argument("--seq", type=count, help="sequence length (default: the context window)")
    p.add_argument("--devices", type=count, default=1, help="data-parallel devices (default: 1)")
    p.add_argument("--sharding", default="none", help=f"one of {', '.join(compute.SHARDINGS)} (default: none)")
    p.add_argument("--dtype", default="bf16", help="training precision (bf16 / fp16: mixed with fp32 master "
                   "weights; fp32), also the KV cache's (default: bf16)")
    p.add_argument("--peak-tflops", type=number(float), default=compute.DEFAULT_PEAK_TFLOPS,
                   help=f"peak TFLOP/s of one device (default: {compute.DEFAULT_PEAK_TFLOPS:g}, an A100 in bf16)")
    p.add_argument("--mfu", type=number(float), default=compute.DEFAULT_MFU,
                   help=f"model FLOPs utilisation, in (0, 1] (default: {compute.DEFAULT_MFU:g})")
    p.add_argument("--budget", type=number(float), help="FLOPs for the compute-optimal split (default: this run's 6ND)")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.set_defaults(func=run)


def count(text: str) -> int:
    """An integer count, also written as 3e11 or 300_000."""
    try:
        return int(text) if text.lstrip("-").replace("_", "").isdigit() else int(float(text))
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    except OverflowError:  # int(float("inf")): argparse lets it escape as a traceback
        raise ValueError(f"not a finite number: {text!r}") from None


def resolve_config(source: str):
    """The ModelConfig of a preset, packaged model, folder, .gguf or config .json, without weights."""
    from .. import assets
    from ..model.config import PRESETS, ModelConfig, preset
    if source in PRESETS:
        return preset(source)
    shapes = compute.published_shapes()  # llama2-7b, gpt3-175b: shapes only
    if source in shapes:
        return shapes[source]
    try:
        path = assets.resolve(source)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}; nor a preset ({', '.join([*PRESETS, *shapes])})") from None
    from ..checkpoints import load_config
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no config.json in {str(path)!r}")
        return load_config(path)
    if path.suffix == ".gguf":
        from ..checkpoints.gguf import _config_from_metadata, _open
        from ..checkpoints.llama import config_from_hf
        return config_from_hf(_config_from_metadata(_open(path), path))
    if path.suffix == ".json":
        from ..checkpoints import config_from_hf, read_json
        from ..errors import UserError
        values = read_json(Path(path))  # names the file: not UTF-8, malformed, not an object
        if "model_type" in values:
            return config_from_hf(values, path)  # names the file and a missing field
        missing = [name for name in ("vocab_size", "hidden_size", "num_layers", "num_heads") if name not in values]
        if missing:  # else every size would silently be ModelConfig's default
            raise UserError(f"{path}: neither a Hugging Face config.json (no model_type) nor gencycle's ModelConfig "
                            f"(no {', '.join(missing)})")
        try:
            return ModelConfig.from_dict(values)
        except (TypeError, KeyError) as error:
            raise UserError(f"{path}: not a Hugging Face config.json (no model_type) nor gencycle's ModelConfig "
                            f"({error})") from None
    raise ValueError(f"{str(path)!r} is not a model folder, a .gguf file or a config .json")


def run(args) -> None:
    config = resolve_config(args.model)
    report = compute.estimate(config, tokens=args.tokens, batch=args.batch, seq=args.seq, devices=args.devices,
                              sharding=args.sharding, dtype=args.dtype, peak_tflops=args.peak_tflops,
                              mfu=args.mfu, budget=args.budget)
    if args.json:
        print(json.dumps({"model": args.model, **report}, indent=2))
    else:
        print(format_report(args.model, report))


# ---------------------------------------------------------------- the table
RECOMPUTE = {"none": "no recomputation", "selective": "selective recomputation", "full": "full checkpointing"}


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def _short(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def _duration(seconds: float) -> str:
    for unit, scale in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= scale:
            return f"{seconds / scale:,.1f} {unit}"
    return f"{seconds:.1f} s"


def format_report(name: str, r: dict) -> str:
    p, inf, tr, fl, opt = r["parameters"], r["inference"], r["training"], r["flops"], r["compute_optimal"]
    states, acts, totals = tr["model_states"], tr["activations"], tr["total"]
    sections = [
        (f"parameters of {name}", [(part.replace("_", "-"), f"{n:,}") for part, n in p.items() if part != "total"]
         + [("total", f"{p['total']:,} ({_short(p['total'])})")]),
        ("inference memory", [(f"weights in {d}", _size(b)) for d, b in inf["weights"].items()]
         + [(f"KV cache per token ({inf['kv_cache_dtype']})", _size(inf["kv_cache_per_token"])),
            (f"KV cache, batch {inf['batch']} x {inf['seq']} tokens", _size(inf["kv_cache"]))]),
        (f"training memory per device ({tr['dtype']}, {tr['devices']} device(s), sharding {tr['sharding']}, "
         f"micro-batch {tr['batch_per_device']} x {tr['seq']})",
         [(part.replace("_", " "), _size(b)) for part, b in states.items() if part != "total"]
         + [("model states", _size(states["total"]))]
         + [(f"activations, {RECOMPUTE[k]}", _size(v)) for k, v in acts.items()]
         + [(f"total, {RECOMPUTE[k]}", _size(v)) for k, v in totals.items()]),
        ("FLOPs & time", [
            ("training tokens", f"{fl['tokens']:,} ({_short(fl['tokens'])})"),
            ("6ND", f"{fl['dense']:.3e}"), ("attention", f"{fl['attention']:.3e}"),
            ("total", f"{fl['total']:.3e} FLOPs = {fl['pf_days']:,.2f} PF-days"),
            (f"time on {fl['devices']} x {fl['peak_tflops']:g} TFLOP/s at {fl['mfu']:.0%} MFU",
             _duration(fl["seconds"]))]),
        (f"compute-optimal for {opt['budget']:.3e} FLOPs (Chinchilla)", [
            (label, f"{_short(s['params'])} params, {_short(s['tokens'])} tokens, loss {s['loss']:.3f}")
            for label, s in (("approach 3", opt["approach_3"]), ("20 tokens / param", opt["tokens_per_parameter_20"]),
                             ("this run", opt["this_run"]))]),
    ]
    width = max(len(label) for _, rows in sections for label, _ in rows)
    lines = []
    for title, rows in sections:
        lines += ["", title] + [f"  {label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines[1:])
