"""Trainer -> rollout weight sync, bucketed through Ray's object store.

Rank 0 of the trainer serialises its weights (transformers names) into buckets of about
``bucket_mb`` and puts each into the object store; every rollout worker fetches the buckets
one by one and loads them in place through vLLM's reload path (vllm_plugin/worker.py). The
GPU path (NCCL broadcast / CUDA IPC through vLLM's weight transfer API) plugs in behind
``sync_weights`` with the same arguments.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch


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


def sync_weights(
    trainer_rank0, rollout_workers: list, *, bucket_mb: float, timeout_s: float
) -> dict:
    """Push the trainer's current weights to every rollout worker; returns timings."""
    import ray

    started = time.perf_counter()
    refs = ray.get(trainer_rank0.export_weights.remote(bucket_mb), timeout=timeout_s)
    exported = time.perf_counter()
    loaded = ray.get([w.load_weights.remote(refs) for w in rollout_workers], timeout=timeout_s)
    if len(set(loaded)) != 1:
        raise RuntimeError(f"rollout workers loaded different tensor counts: {loaded}")
    return {
        "export_s": exported - started,
        "load_s": time.perf_counter() - exported,
        "buckets": len(refs),
        "tensors": loaded[0],
    }
