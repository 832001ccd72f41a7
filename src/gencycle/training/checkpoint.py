"""Training checkpoints that a run resumes from exactly.

    out_dir/checkpoints/step-00000100/
        model.safetensors     trainable parameters (or all, save_trainable_only=False)
        trainer_state.pt      step, optimizer, scheduler, sampler position, history
        rng-rank{r}.pt        python / numpy / torch (/ cuda) RNG states of each process
    out_dir/checkpoints/latest   name of the newest complete checkpoint

A checkpoint is written into `step-N.tmp/` and renamed when complete, so a crash
while saving leaves the previous checkpoint intact: a run loses at most the steps
since the last one.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

MODEL_FILE, STATE_FILE = "model.safetensors", "trainer_state.pt"


def _model_state(trainer) -> dict[str, torch.Tensor]:
    """Weights to save, by name in the user's model (collective under FSDP: every rank calls it)."""
    module, keep_all = trainer.module, not trainer.config.save_trainable_only
    names = [n for n, p in module.named_parameters() if keep_all or p.requires_grad]  # tied weights once
    if keep_all:
        buffers = dict(module.named_buffers())
        names += [n for n in module.state_dict() if n in buffers]  # persistent buffers only
    if trainer.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        full = dict(module.named_parameters(), **dict(module.named_buffers()))
    return {n: full[n].detach().to("cpu").contiguous() for n in names if n in full}


def _optimizer_state(trainer) -> dict:
    if trainer.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(trainer.model, trainer.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return trainer.optimizer.state_dict()


def rng_state(device: torch.device) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(trainer, root: Path) -> Path:
    """Write a checkpoint of the trainer's current step under `root`; returns its folder."""
    info, name = trainer.dist, f"step-{trainer.step:08d}"
    final, tmp = root / name, root / f"{name}.tmp"
    weights, optimizer = _model_state(trainer), _optimizer_state(trainer)
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    info.barrier()
    torch.save(rng_state(info.device), tmp / f"rng-rank{info.rank}.pt")
    info.barrier()
    if info.is_main:
        save_file(weights, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        state = trainer.state()
        state.update(optimizer=optimizer, world_size=info.world_size, strategy=trainer.strategy,
                     trainable_only=trainer.config.save_trainable_only)
        torch.save(state, tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)                      # the commit point
        _write_text_atomic(root / "latest", name + "\n")
        _prune(root, trainer.config.keep_checkpoints)
    info.barrier()
    return final


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def latest(out_dir: Path | None) -> Path | None:
    """The newest complete checkpoint of a run folder (or a checkpoints folder); None if none."""
    if out_dir is None:
        return None
    root = out_dir / "checkpoints" if (out_dir / "checkpoints").is_dir() else out_dir
    pointer = root / "latest"
    if pointer.exists() and (root / pointer.read_text().strip() / STATE_FILE).exists():
        return root / pointer.read_text().strip()
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).exists() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def load(trainer, path: Path) -> dict:
    """Restore model weights, optimizer, scheduler, sampler position and RNG states from `path`;
    returns the saved trainer state (its "config" and "max_steps" say how the run was set up)."""
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"{str(path)!r} is not a training checkpoint (no {STATE_FILE})")
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    info = trainer.dist
    if state["world_size"] != info.world_size:
        raise ValueError(f"checkpoint {path} was written by {state['world_size']} process(es); this run has "
                         f"{info.world_size}: resume with the same number")
    weights = load_file(str(path / MODEL_FILE))
    module = trainer.module
    params = dict(module.named_parameters())
    state_shapes = {n: tuple(t.shape) for n, t in module.state_dict().items()}
    unknown = [n for n in weights if n not in state_shapes]
    if unknown:
        raise ValueError(f"checkpoint {path} has weights this model lacks: {', '.join(unknown[:5])} "
                         "(was it written for another model or adapter?)")
    wrong = [f"{n} {tuple(t.shape)} vs {state_shapes[n]}" for n, t in weights.items()
             if tuple(t.shape) != state_shapes[n]]
    if wrong:
        raise ValueError(f"checkpoint {path} has weights of another shape than this model's: {'; '.join(wrong[:3])}")
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"checkpoint {path} lacks trainable weights: {', '.join(missing[:5])}")
    if trainer.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, set_model_state_dict, set_optimizer_state_dict)
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(trainer.model, weights, options=options)
        set_optimizer_state_dict(trainer.model, trainer.optimizer, state["optimizer"], options=options)
    else:
        with torch.no_grad():
            for name, tensor in weights.items():
                target = params[name] if name in params else module.get_buffer(name)
                target.copy_(tensor)
        trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.sampler.load_state_dict(state["sampler"])
    trainer.step, trainer.history, trainer.tokens_seen = state["step"], state["history"], state["tokens_seen"]
    set_rng_state(torch.load(path / f"rng-rank{info.rank}.pt", map_location="cpu", weights_only=False), info.device)
    return state
