"""`gencycle merge MODEL ADAPTER --out DIR`: bake a LoRA adapter into the weights.

The folder it writes is a whole model: config.json and model.safetensors in the Hugging Face
layout, and the base model's tokenizer with its chat template (the original files of a model
folder; for a .gguf file or a packaged model, the tokenizer read from its metadata, saved as
tokenizer.json + tokenizer_config.json), so `gencycle generate DIR ...` runs on it.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from ..errors import OptionError, UserError, check_input, check_output

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "spiece.model", "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja")
DTYPES = ("fp32", "bf16", "fp16")


def register(subparsers) -> None:
    merge = subparsers.add_parser("merge", help="merge a LoRA adapter (PEFT format) into a model; "
                                  "write a Hugging Face model folder with its tokenizer")
    merge.add_argument("model", help="base model folder, .gguf file or packaged name")
    merge.add_argument("adapter", help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    merge.add_argument("--out", required=True, help="folder to write the merged model and its tokenizer to")
    merge.add_argument("--dtype", choices=DTYPES, default=None, help="weights dtype of the merged model (default: fp32)")
    merge.set_defaults(func=run_merge)


def merge_adapter(model_path, adapter_path, out, dtype=None) -> Path:
    """Load MODEL, apply the LoRA ADAPTER, merge it, save the HF layout, the tokenizer and the
    generation config to OUT. Every input and OUT are checked before the weights are read."""
    from .. import assets, load_model, load_tokenizer, save_pretrained
    from ..adapters import load_adapter, merge_lora
    from ..adapters.peft_format import read_adapter
    from ..checkpoints import resolve_dtype
    out = check_output(out, "out")
    adapter = check_input(adapter_path, "adapter", "folder")
    try:
        resolve_dtype(dtype)
    except ValueError:
        raise OptionError("dtype", f"must be one of {', '.join(DTYPES)}", dtype) from None
    config, _ = read_adapter(adapter)
    if not isinstance(config, dict):
        raise UserError(f"{adapter / 'adapter_config.json'}: expected a JSON object, got a {type(config).__name__}")
    if config.get("peft_type") != "LORA":
        raise UserError(f"only LoRA adapters can be merged into the weights; {adapter_path} is "
                        f"{config.get('peft_type')!r} (a soft prompt stays a separate input)")
    source = assets.resolve(model_path)
    try:
        tokenizer = load_tokenizer(model_path)  # before the weights: a broken tokenizer fails now
    except FileNotFoundError:
        tokenizer = None
        warnings.warn(f"{model_path} has no tokenizer, so the merged folder has none: copy one in before "
                      "generating with it")
    model = load_model(model_path, device="cpu")
    model = merge_lora(load_adapter(model, adapter), unload=True)
    if dtype is not None:
        model = model.to(resolve_dtype(dtype))
    out = save_pretrained(model, out)
    copied = [name for name in TOKENIZER_FILES if source.is_dir() and (source / name).is_file()]
    for name in copied:
        shutil.copy2(source / name, out / name)
    if tokenizer is not None and not (out / "tokenizer.json").is_file() and not (out / "spiece.model").is_file():
        tokenizer.save_pretrained(out)  # a .gguf file's tokenizer (and chat template) from its metadata
    if source.is_dir() and (source / "generation_config.json").is_file():
        shutil.copy2(source / "generation_config.json", out / "generation_config.json")
    return out


def run_merge(args) -> None:
    out = merge_adapter(args.model, args.adapter, args.out, args.dtype)
    print(f"wrote merged model to {out} (config.json, model.safetensors, the tokenizer)")
