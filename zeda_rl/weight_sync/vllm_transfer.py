"""Weight sync through vLLM's weight transfer API: ``nccl`` (GPU), ``ipc`` (CUDA IPC
handles, colocated GPU layout) or ``gloo`` (the same protocol on CPU, through the plugin's
``zeda_gloo`` engine: vllm_plugin/weight_transfer.py).

The trainer ranks drive the engines' init / start / update / finish calls while rank 0
broadcasts over a private group. The group is fixed at connect time, so a restarted rollout
actor makes the whole group reconnect.
"""

from __future__ import annotations

import time

from zeda_rl.weight_sync.base import WeightSync


class VllmTransferSync(WeightSync):
    def __init__(
        self,
        method: str,
        trainers: list,
        *,
        bucket_mb: float,
        workers_per_engine: int,
        timeout_s: float,
    ) -> None:
        super().__init__(trainers, timeout_s=timeout_s)
        self.method = method
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.workers_per_engine = workers_per_engine

    def connect(self, rollouts: list) -> dict:
        started = time.perf_counter()
        self.rollouts = list(rollouts)
        self._get(
            [
                t.connect_weight_transfer.remote(
                    self.method,
                    self.rollouts,
                    workers_per_engine=self.workers_per_engine,
                    bucket_bytes=self.bucket_bytes,
                    timeout_s=self.timeout_s,
                )
                for t in self.trainers
            ]
        )
        return {"connect_s": time.perf_counter() - started}

    def push(self) -> dict:
        self._check_connected()
        started = time.perf_counter()
        sent = self._get([t.send_weights.remote() for t in self.trainers])[0]
        return {"sync_s": time.perf_counter() - started, "tensors": sent, "buckets": 0}
