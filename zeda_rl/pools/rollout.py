"""Rollout pool: vLLM engines serving the ZEDA student (through the zeda_rl plugin).

Each worker samples responses with their log-probabilities and, for routing replay, the
expert ids of every fed token; it takes new weights from the trainer after each step.
"""

from __future__ import annotations

from zeda_rl.pools.engine import EngineWorker, Generation, sample, score


class RolloutWorker(EngineWorker):
    def __init__(
        self,
        model_dir: str,
        *,
        capture_routes: bool,
        weight_transfer_backend: str | None = None,
        **engine_options,  # seed, max_model_len, kv_cache_gib, tensor_parallel_size
    ):
        self.capture_routes = capture_routes
        self._transfer_joined = False
        super().__init__(
            model_dir,
            capture_routes=capture_routes,
            weight_transfer_backend=weight_transfer_backend,
            **engine_options,
        )

    def generate(
        self,
        prompts: list[list[int]],
        *,
        temperature: float,
        max_tokens: int,
        stop_token_ids: list[int],
        seed: int | None = None,
    ) -> list[Generation]:
        return sample(
            self.llm,
            prompts,
            temperature=temperature,
            max_tokens=max_tokens,
            stop_token_ids=stop_token_ids,
            capture_routes=self.capture_routes,
            seed=seed,
        )

    def score(
        self, sequences: list[tuple[list[int], list[int]]], temperature: float
    ) -> list[list[float]]:
        return score(self.llm, sequences, temperature=temperature)

    def load_weights(self, bucket_refs: list) -> int:
        """Fetch the trainer's weight buckets from the object store (one at a time) and load
        them in place; returns the number of tensors loaded."""
        import ray

        buckets = [ray.get(ref) for ref in bucket_refs]
        (loaded,) = self.llm.collective_rpc("zeda_load_weights", args=(buckets,))
        return loaded

    # vLLM's weight transfer control plane (the trainer drives it: weight_sync.py).

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        if self._transfer_joined:  # a reconnect: leave the old group first
            self.llm.shutdown_weight_transfer_engine()
        self.llm.init_weight_transfer_engine({"init_info": init_info})
        self._transfer_joined = True

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self) -> None:
        self.llm.finish_weight_update()
