"""Several processes (torchrun): each rank extracts its own shards of the gradient store.

`torchrun --nproc-per-node N -m weights2data select --store DIR ...` sets WORLD_SIZE, RANK
and LOCAL_RANK; the process group is only initialised when WORLD_SIZE > 1 (gloo on CPU,
NCCL when the run is on CUDA). Rank 0 runs the selection once every shard is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def world() -> World:
    """This process's place among torchrun's processes (rank 0 of 1 outside torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(device: str) -> tuple[World, str]:
    """Join the process group when there are several processes; returns the world and the
    device this rank should use (cuda:LOCAL_RANK for a CUDA run)."""
    w = world()
    if w.size == 1:
        return w, device
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        device = f"cuda:{w.local_rank}"
        torch.cuda.set_device(w.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return w, device


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
