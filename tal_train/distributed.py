"""Multi-process training under ``torchrun``.

`torchrun --nproc_per_node N -m tal_train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; `setup`
then joins the process group (NCCL on GPU, gloo on CPU) and picks this rank's device. Rank 0
(`DistInfo.is_main`) evaluates and writes metrics and checkpoints; the others wait at `barrier`.
Without those variables everything here is a no-op for a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tal_infer.errors import TalError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; return the rank info and its device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise TalError("--device cuda: no CUDA device is available")
    dev = torch.device("cuda", info.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if info.active and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return info, dev


def cleanup(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def broadcast_from_main(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Rank 0's `tensor` on every rank (same shape everywhere), so all ranks share one plan."""
    if info.active:
        dist.broadcast(tensor, src=0)
    return tensor
