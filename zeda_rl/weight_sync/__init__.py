"""Trainer -> rollout weight sync after every optimizer step (``weight_sync.method``).

One protocol (``WeightSync``: ``connect(rollouts)`` once, and again after a rollout actor is
replaced; ``push()`` after every optimizer step), one class per transport:

* ``object_store`` (object_store.py; any layout, the CPU default): trainer rank 0 puts its
  weights (transformers names) into Ray's object store in buckets; every rollout worker
  loads them in place through vLLM's reload path (vllm_plugin/worker.py).
* ``gloo`` / ``nccl`` / ``ipc`` (vllm_transfer.py): vLLM's weight transfer API, rank 0
  broadcasting over a private group to every engine's workers.
"""

from __future__ import annotations

from zeda_rl.config import WEIGHT_SYNC_METHODS as METHODS
from zeda_rl.weight_sync.base import WeightSync

# weight_sync.method -> the rollout engines' WeightTransferConfig.backend
ENGINE_BACKENDS = {"gloo": "zeda_gloo", "nccl": "nccl", "ipc": "ipc"}


def make_weight_sync(
    method: str, trainers: list, *, bucket_mb: float, workers_per_engine: int, timeout_s: float
) -> WeightSync:
    """The transport ``method`` between the trainer ranks ``trainers`` and the rollouts."""
    if method == "object_store":
        from zeda_rl.weight_sync.object_store import ObjectStoreSync

        return ObjectStoreSync(trainers, bucket_mb=bucket_mb, timeout_s=timeout_s)
    if method in ENGINE_BACKENDS:
        from zeda_rl.weight_sync.vllm_transfer import VllmTransferSync

        return VllmTransferSync(
            method,
            trainers,
            bucket_mb=bucket_mb,
            workers_per_engine=workers_per_engine,
            timeout_s=timeout_s,
        )
    raise ValueError(f"weight_sync.method={method!r}: choose one of {METHODS}")


__all__ = ["ENGINE_BACKENDS", "METHODS", "WeightSync", "make_weight_sync"]
