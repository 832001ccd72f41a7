"""Running one training loop on one process or many.

`torchrun --nproc_per_node N ...` sets RANK / WORLD_SIZE / LOCAL_RANK in the
environment; `setup()` reads them, starts the process group (NCCL on GPUs, gloo
on CPU) and picks this process's device. Everything else in `gencycle.training`
asks the returned `Dist` for its rank instead of reading the environment again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

STRATEGIES = ("auto", "none", "ddp", "fsdp")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (in place; returned for chaining)."""
        if self.enabled:
            dist.all_reduce(values)
        return values


def setup(device: str | torch.device | None = None) -> Dist:
    """Join the process group that torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device
                                if device.type == "cuda" else None)
    return Dist(rank, world_size, local_rank, device)


def wrap(model: torch.nn.Module, strategy: str, info: Dist) -> torch.nn.Module:
    """DDP or FSDP around the model (it is already on `info.device`); the model itself when alone."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if not info.enabled or strategy == "none":
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard
        stacks = [s for s in (getattr(model, "encoder", None), getattr(model, "decoder", None)) if s is not None]
        for stack in stacks:  # one shard group per block, then the rest (embeddings, head) at the root
            for block in stack.layers:
                fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's model inside a DDP wrapper (FSDP2 shards in place, so it is the model)."""
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
