"""Trainer pool: one actor per data-parallel rank, each owning a trainer backend."""

from __future__ import annotations

from pathlib import Path

from zeda_rl.trainer.batch import Sample
from zeda_rl.trainer.interface import RankSpec
from zeda_rl.trainer.registry import make_backend


class TrainerWorker:
    def __init__(
        self,
        model_dir: str,
        *,
        backend: str,
        spec: RankSpec,
        threads: int = 1,
        parallel: dict[str, int] | None = None,
    ):
        import torch

        # Ray does not cap intra-op threads for fractional CPUs: ranks sharing cores would
        # oversubscribe them (measured: 10x slower steps with 2 ranks on 2 cores).
        torch.set_num_threads(threads)
        self.rank = spec.rank
        self._build = (backend, model_dir, spec, parallel)
        self.backend = None  # built by setup(), once the rendezvous is known
        # This rank's end of vLLM's weight transfer (weight_sync/vllm_transfer.py).
        self.transfer = None

    def rendezvous(self) -> str:
        """Rank 0: an address on this node the other ranks can reach."""
        import ray

        from zeda_rl.trainer.distributed import free_port

        return f"tcp://{ray.util.get_node_ip_address()}:{free_port('')}"

    def setup(self, init_method: str) -> None:
        """Join the process group at ``init_method`` and load the model (every rank)."""
        from dataclasses import replace

        kind, model_dir, spec, parallel = self._build
        self.backend = make_backend(
            kind, model_dir, replace(spec, init_method=init_method), parallel
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
        """Rank 0 puts the weights into the object store in buckets and returns the refs;
        every rank must call it (a sharded backend gathers its shards)."""
        import ray

        from zeda_rl.weight_sync.object_store import bucketize

        # Every bucket is built (and every tensor checked) before any reaches the store.
        buckets = bucketize(self.backend.finite_tensors("a weight sync"), bucket_mb)
        return [ray.put(b) for b in buckets] if self.rank == 0 else []

    def connect_weight_transfer(
        self,
        method: str,
        rollouts: list,
        *,
        workers_per_engine: int,
        bucket_bytes: int,
        timeout_s: float,
    ) -> None:
        """Join (or re-join) the weight transfer group with every rollout engine."""
        from zeda_rl.vllm_plugin.weight_transfer import connect_trainer

        self.disconnect_weight_transfer()
        self.transfer = connect_trainer(
            method,
            rank=self.rank,
            named_tensors=self.backend.named_tensors,
            rollouts=rollouts,
            workers_per_engine=workers_per_engine,
            bucket_bytes=bucket_bytes,
            timeout_s=timeout_s,
        )

    def send_weights(self) -> int:
        """One round of vLLM's weight transfer; returns the number of tensors sent."""
        if self.transfer is None:
            raise RuntimeError("send_weights before connect_weight_transfer")
        # Checked before the first bucket leaves: a sent bucket cannot be taken back.
        self.backend.check_finite_weights("a weight sync")
        self.transfer.send_weights()
        return len(self.transfer.source.metadata())  # read once, at the first send

    def disconnect_weight_transfer(self) -> None:
        if self.transfer is not None:
            self.transfer.shutdown()
            self.transfer = None

    def reset_optimizer(
        self, betas: tuple[float, float] | None = None, weight_decay: float | None = None
    ) -> None:
        self.backend.reset_optimizer(betas, weight_decay)

    def save(self, directory: str) -> None:
        self.backend.check_finite_weights(f"the checkpoint {directory}")
        self.backend.save(Path(directory))

    def load_optimizer(self, directory: str) -> None:
        self.backend.load_optimizer(Path(directory))

    def close(self) -> None:
        self.disconnect_weight_transfer()
        if self.backend is not None:
            self.backend.close()
