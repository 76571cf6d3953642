"""Teacher pool: the frozen original model in vLLM. Stage 1 asks it for responses; stage 2
for the log-probabilities of the student's sampled tokens (same tokens, same temperature),
or with ``stage2.loss=topk_kl`` for its top-k distribution at every response position."""

from __future__ import annotations

import numpy as np

from zeda_rl.pools.engine import (
    DEFAULT_LOGPROBS_LIMIT,
    EngineWorker,
    Generation,
    sample,
    score,
    score_topk,
)


class TeacherWorker(EngineWorker):
    def __init__(
        self,
        model_dir: str,
        *,
        temperature: float,
        top_k: int = DEFAULT_LOGPROBS_LIMIT,
        **engine_options,
    ):
        self.temperature = temperature
        # Scores at T != 1 need the whole vocabulary's log-probabilities to renormalise;
        # topk_kl needs its top_k per position (vLLM refuses more than the engine's limit).
        super().__init__(
            model_dir,
            full_vocab_logprobs=temperature != 1.0,
            logprobs_limit=max(DEFAULT_LOGPROBS_LIMIT, top_k),
            **engine_options,
        )

    def generate(
        self, prompts: list[list[int]], *, max_tokens: int, stop_token_ids: list[int]
    ) -> list[Generation]:
        return sample(
            self.llm,
            prompts,
            temperature=self.temperature,
            max_tokens=max_tokens,
            stop_token_ids=stop_token_ids,
        )

    def score(self, sequences: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        return score(self.llm, sequences, temperature=self.temperature)

    def score_topk(
        self, sequences: list[tuple[list[int], list[int]]], k: int, prompt_positions: bool
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        return score_topk(self.llm, sequences, k=k, prompt_positions=prompt_positions)
