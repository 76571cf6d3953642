"""What the controller needs from any trainer backend, and the settings every backend takes.

No backend is imported here: the torch backend (torch_backend.py) and the megatron one
(megatron/backend.py) both implement ``TrainerBackend``; registry.py picks one by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from zeda_rl.losses.group_aux_loss import GroupAuxLossConfig
    from zeda_rl.trainer.batch import Sample


@dataclass
class OptimConfig:
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    micro_batch_size: int = 4
    # Adam's fp32 master weights and moments in CPU memory, stepped there and copied back
    # (ZeRO-Offload's idea, as the ZEDA authors ran; trainer.optimizer_offload).
    offload: bool = False


@dataclass
class RankSpec:
    """What every backend's rank is built with (its model-parallel sizes aside)."""

    rank: int
    world_size: int
    init_method: str  # the default process group's rendezvous (distributed.py)
    optim: OptimConfig
    gal: GroupAuxLossConfig
    temperature: float = 1.0  # of the rollouts: logprobs are taken at it
    routing_replay: bool = True  # R3: on-policy steps replay the rollouts' expert ids
    ppo_clip: float = 0.2  # the opd objective's clip
    seed: int = 0


class TrainerBackend(Protocol):
    """One data-parallel rank's trainer. Sharded backends (megatron with expert parallelism)
    need every call on every rank: forwards, exports and saves are collectives."""

    def train_step(
        self, samples: list[Sample], *, objective: str, lr: float, global_tokens: int
    ) -> dict[str, float]:
        """One optimizer step of ``objective`` (losses/objective.py) over this rank's share;
        ``global_tokens``: the objective's normalizer over the whole step, all ranks."""
        ...

    def logprobs(
        self, samples: list[Sample], temperature: float, replay: bool | None = None
    ) -> list[list[float]]: ...

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The student's weights under the transformers names the vLLM plugin loads."""
        ...

    def save(self, directory: Path) -> None: ...

    def load_optimizer(self, directory: Path) -> None: ...

    def reset_optimizer(
        self, betas: tuple[float, float] | None = None, weight_decay: float | None = None
    ) -> None: ...

    def close(self) -> None: ...
