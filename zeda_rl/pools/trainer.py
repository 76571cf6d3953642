"""Trainer pool: one actor per data-parallel rank, each owning a trainer backend."""

from __future__ import annotations

from pathlib import Path

from zeda_rl.losses.group_aux_loss import GroupAuxLossConfig
from zeda_rl.trainer.backend import OptimConfig, TorchBackend
from zeda_rl.trainer.batch import Sample

BACKENDS = ("torch",)  # "megatron" arrives with issue #5


class TrainerWorker:
    def __init__(
        self,
        model_dir: str,
        *,
        backend: str,
        rank: int,
        world_size: int,
        init_method: str,
        optim: OptimConfig,
        gal: GroupAuxLossConfig,
        temperature: float,
        routing_replay: bool,
        ppo_clip: float,
        seed: int,
        threads: int = 1,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"trainer.backend={backend!r}: available {BACKENDS}")
        import torch

        # Ray does not cap intra-op threads for fractional CPUs: ranks sharing cores would
        # oversubscribe them (measured: 10x slower steps with 2 ranks on 2 cores).
        torch.set_num_threads(threads)
        self.rank = rank
        self.backend = TorchBackend(
            model_dir,
            rank=rank,
            world_size=world_size,
            init_method=init_method,
            optim=optim,
            gal=gal,
            temperature=temperature,
            routing_replay=routing_replay,
            ppo_clip=ppo_clip,
            seed=seed,
        )

    def ready(self) -> int:
        import os

        return os.getpid()

    def train_step(
        self, samples: list[Sample], *, objective: str, lr: float, global_tokens: int
    ) -> dict[str, float]:
        return self.backend.train_step(
            samples, objective=objective, lr=lr, global_tokens=global_tokens
        )

    def logprobs(
        self, samples: list[Sample], temperature: float, replay: bool | None = None
    ) -> list[list[float]]:
        return self.backend.logprobs(samples, temperature, replay)

    def export_weights(self, bucket_mb: float) -> list:
        """Put this rank's weights into the object store in buckets; returns the refs."""
        import ray

        from zeda_rl.weight_sync import bucketize

        return [ray.put(b) for b in bucketize(self.backend.named_tensors(), bucket_mb)]

    def reset_optimizer(self) -> None:
        self.backend.reset_optimizer()

    def save(self, directory: str) -> None:
        self.backend.save(Path(directory))

    def load_optimizer(self, directory: str) -> None:
        self.backend.load_optimizer(Path(directory))

    def close(self) -> None:
        self.backend.close()
