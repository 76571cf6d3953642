"""Weight sync through Ray's object store: works in every layout, on CPU and across nodes.

Every trainer rank exports (a sharded trainer gathers its experts); rank 0 serialises the
weights into safetensors buckets of about ``bucket_mb`` and puts them in the object store;
every rollout worker fetches them one by one and loads them in place.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

from zeda_rl.weight_sync.base import WeightSync


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


class ObjectStoreSync(WeightSync):
    def __init__(self, trainers: list, *, bucket_mb: float, timeout_s: float) -> None:
        super().__init__(trainers, timeout_s=timeout_s)
        self.bucket_mb = bucket_mb

    def connect(self, rollouts: list) -> dict:
        self.rollouts = list(rollouts)  # nothing to set up: each push names its objects
        return {"connect_s": 0.0}

    def push(self) -> dict:
        self._check_connected()
        started = time.perf_counter()
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
