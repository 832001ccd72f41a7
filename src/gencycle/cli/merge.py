"""`gencycle merge MODEL ADAPTER --out DIR`: bake a LoRA adapter into the weights."""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "spiece.model", "vocab.json", "merges.txt", "vocab.txt", "generation_config.json")


def register(subparsers) -> None:
    merge = subparsers.add_parser("merge", help="merge a LoRA adapter (PEFT format) into a model; "
                                  "write a Hugging Face model folder")
    merge.add_argument("model", help="base model folder, .gguf file or packaged name")
    merge.add_argument("adapter", help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    merge.add_argument("--out", required=True, help="folder to write the merged model to")
    merge.add_argument("--dtype", default=None, help="fp32 | bf16 | fp16 (default: fp32)")
    merge.set_defaults(func=run_merge)


def merge_adapter(model_path, adapter_path, out, dtype=None) -> Path:
    """Load MODEL, apply the LoRA ADAPTER, merge it, save the HF layout (and tokenizer files) to OUT."""
    from .. import assets, load_model, save_pretrained
    from ..adapters import load_adapter, merge_lora
    from ..adapters.peft_format import read_adapter
    config, _ = read_adapter(adapter_path)
    if config.get("peft_type") != "LORA":
        raise ValueError(f"only LoRA adapters can be merged into the weights; {adapter_path} is "
                         f"{config.get('peft_type')!r} (a soft prompt stays a separate input)")
    model = load_model(model_path, device="cpu")
    model = merge_lora(load_adapter(model, adapter_path), unload=True)
    if dtype is not None:
        from ..checkpoints import resolve_dtype
        model = model.to(resolve_dtype(dtype))
    out = save_pretrained(model, out)
    source = assets.resolve(model_path)
    if source.is_dir():
        for name in TOKENIZER_FILES:
            if (source / name).exists():
                shutil.copy2(source / name, out / name)
    return out


def run_merge(args) -> None:
    out = merge_adapter(args.model, args.adapter, args.out, args.dtype)
    print(f"wrote merged model to {out}")
