"""Process-group set-up shared by the trainer backends and the weight-transfer group."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now ("" for every interface: peers on other nodes)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def local_init_method() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def rank_device(rank: int):
    """One GPU per rank when there are GPUs (a Ray actor sees only its own), else the CPU."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_process_group(*, rank: int, world_size: int, init_method: str) -> None:
    """The default group of the trainer ranks: NCCL on GPUs, gloo on CPU (idempotent)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
