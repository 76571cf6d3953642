"""Trainer -> rollout weight sync after every optimizer step (``weight_sync.method``).

Two transports behind ``WeightSync.push``:

* ``object_store`` (any layout, CPU default): trainer rank 0 serialises its weights
  (transformers names) into buckets of about ``bucket_mb`` and puts them in Ray's object
  store; every rollout worker fetches them one by one and loads them in place through vLLM's
  reload path (vllm_plugin/worker.py).
* vLLM's weight transfer API: the trainer ranks drive the engines' init / start / update /
  finish calls while rank 0 broadcasts over a private group: ``nccl`` (GPU), ``ipc`` (CUDA
  IPC handles, colocated GPU layout) or ``gloo`` (the same protocol on CPU, through the
  plugin's ``zeda_gloo`` backend: vllm_plugin/weight_transfer.py). The group is fixed at
  connect time, so a restarted rollout actor makes the whole group reconnect.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

from zeda_rl.config import WEIGHT_SYNC_METHODS as METHODS

# weight_sync.method -> the rollout engines' WeightTransferConfig.backend
ENGINE_BACKENDS = {"gloo": "zeda_gloo", "nccl": "nccl", "ipc": "ipc"}


def bucketize(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_mb: float) -> list[bytes]:
    """safetensors-serialised buckets of at most ~``bucket_mb`` (a bigger tensor is alone)."""
    from safetensors.torch import save

    limit = bucket_mb * 2**20
    buckets: list[bytes] = []
    current: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > limit:
            buckets.append(save(current))
            current, size = {}, 0
        current[name] = tensor.detach().contiguous().cpu()
        size += nbytes
    if current:
        buckets.append(save(current))
    return buckets


class WeightSync:
    """``connect(rollouts)`` once (and again after a rollout actor is replaced), then
    ``push()`` after every optimizer step; both return quickly or raise within
    ``timeout_s``."""

    def __init__(
        self,
        method: str,
        trainers: list,
        *,
        bucket_mb: float,
        workers_per_engine: int,
        timeout_s: float,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"weight_sync.method={method!r}: choose one of {METHODS}")
        self.method = method
        self.trainers = trainers
        self.bucket_mb = bucket_mb
        self.workers_per_engine = workers_per_engine
        self.timeout_s = timeout_s
        self.rollouts: list = []

    def _get(self, refs):
        import ray

        return ray.get(refs, timeout=self.timeout_s)

    def connect(self, rollouts: list) -> dict:
        """(Re)build the transfer group between the trainer ranks and ``rollouts``."""
        started = time.perf_counter()
        self.rollouts = list(rollouts)
        if self.method != "object_store":
            self._get(
                [
                    t.connect_weight_transfer.remote(
                        self.method,
                        self.rollouts,
                        workers_per_engine=self.workers_per_engine,
                        bucket_bytes=int(self.bucket_mb * 2**20),
                        timeout_s=self.timeout_s,
                    )
                    for t in self.trainers
                ]
            )
        return {"connect_s": time.perf_counter() - started}

    def push(self) -> dict:
        """Send the trainer's current weights to every connected rollout engine."""
        if not self.rollouts:
            raise RuntimeError("WeightSync.push before connect")
        started = time.perf_counter()
        if self.method != "object_store":
            sent = self._get([t.send_weights.remote() for t in self.trainers])[0]
            return {"sync_s": time.perf_counter() - started, "tensors": sent, "buckets": 0}
        # Every rank exports (a sharded trainer gathers); rank 0 returns the buckets.
        refs = self._get([t.export_weights.remote(self.bucket_mb) for t in self.trainers])[0]
        exported = time.perf_counter()
        loaded = self._get([w.load_weights.remote(refs) for w in self.rollouts])
        if len(set(loaded)) != 1:
            raise RuntimeError(f"rollout workers loaded different tensor counts: {loaded}")
        return {
            "sync_s": time.perf_counter() - started,
            "export_s": exported - started,
            "tensors": loaded[0],
            "buckets": len(refs),
        }
