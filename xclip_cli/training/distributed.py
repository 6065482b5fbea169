"""``torchrun``: the process group, this process's rank, and the two collectives the loop needs.

Each of N processes takes its slice of every global batch (:class:`~.data.EpochBatches`) and of the
validation clips; sums are reduced here and rank 0 alone writes the run folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def world_size() -> int:
    """torchrun's ``WORLD_SIZE`` (1 without torchrun or when it is not a number)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class Dist:
    """This process's place under ``torchrun`` (rank 0 of 1 without it) and the collectives the loop uses."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.initialized_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device: str) -> tuple[Dist, torch.device]:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) -> a process group (nccl on CUDA, else gloo)."""
    from ..model import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device)
    if world <= 1:
        return Dist(), target
    if target.type == "cuda":
        target = torch.device("cuda", local if target.index is None else target.index)
        torch.cuda.set_device(target)
    dist = Dist(rank, world, local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if target.type == "cuda" else "gloo")
        dist.initialized_here = True
    return dist, target
