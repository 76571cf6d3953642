"""The training objectives of the two stages, behind one interface.

A stage names its objective (``sft`` for stage 1; ``opd`` or ``topk_kl`` for stage 2). An
objective owns its loss on one micro-batch, the statistics it sums over ranks, and the
metrics it reports from those sums; the trainer's step (trainer/step.py) is the same for all
of them. New objectives register with ``@register_objective``, as verl's policy losses do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch

    from zeda_rl.trainer.batch import Batch, Sample


class Objective(ABC):
    name: ClassVar[str]
    label: ClassVar[str]  # how the stage's progress bar names it
    # Trains on the student's own samples: rollout routes are replayed (R3).
    on_policy: ClassVar[bool] = False
    # Sums every rank contributes (an empty lockstep micro-batch reports zeros for each).
    stat_keys: ClassVar[tuple[str, ...]]

    def normalizer(self, samples: Sequence[Sample]) -> int:
        """The positions every per-token average of a step divides by (over all ranks)."""
        return sum(len(s.response_ids) for s in samples)

    @abstractmethod
    def loss(
        self, logits: torch.Tensor, logp: torch.Tensor, batch: Batch, normalizer: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one non-empty micro-batch (already divided by ``normalizer``) and
        its ``stat_keys`` sums. ``logp``: the log-probabilities of the batch's targets."""

    @abstractmethod
    def metrics(self, sums: dict[str, float], normalizer: int) -> dict[str, float]:
        """The step's metrics from the statistics summed over micro-batches and ranks."""


_OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    if cls.name in _OBJECTIVES:
        raise ValueError(f"objective {cls.name!r} registered twice")
    _OBJECTIVES[cls.name] = cls
    return cls


def get_objective(name: str, **options) -> Objective:
    """The objective ``name`` (sft | opd | topk_kl) built with its ``options``."""
    import zeda_rl.losses.opd_loss
    import zeda_rl.losses.sft
    import zeda_rl.losses.topk_kl  # noqa: F401  (each registers itself)

    if name not in _OBJECTIVES:
        raise ValueError(f"objective {name!r}: choose one of {sorted(_OBJECTIVES)}")
    return _OBJECTIVES[name](**options)
