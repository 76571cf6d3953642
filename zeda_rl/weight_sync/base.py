"""The protocol every weight-sync transport implements."""

from __future__ import annotations

from abc import ABC, abstractmethod


class WeightSync(ABC):
    """Moves the trainer ranks' current weights into every rollout engine. Both calls
    return quickly or raise within ``timeout_s``."""

    def __init__(self, trainers: list, *, timeout_s: float) -> None:
        self.trainers = trainers
        self.timeout_s = timeout_s
        self.rollouts: list = []

    def _get(self, refs):
        import ray

        return ray.get(refs, timeout=self.timeout_s)

    @abstractmethod
    def connect(self, rollouts: list) -> dict:
        """(Re)connect to ``rollouts``; returns timings."""

    @abstractmethod
    def push(self) -> dict:
        """Send the current weights to every connected engine; returns the number of
        tensors (``tensors``) and timings."""

    def _check_connected(self) -> None:
        if not self.rollouts:
            raise RuntimeError(f"{type(self).__name__}.push before connect")
