"""The prompt set of both stages: train-split prompts of the structured tasks, tokenised
once with the run's chat template so every pool sees the same token ids."""

from __future__ import annotations

import random

from zeda_rl.data.tasks import TASKS
from zeda_rl.data.tokenizer import chat_prompt


def build_prompts(mix: dict[str, int], seed: int) -> list[str]:
    """``mix``: task -> number of prompts (train split; never the held-out evaluation)."""
    unknown = sorted(set(mix) - set(TASKS))
    if unknown:
        raise ValueError(f"prompts.mix: unknown tasks {unknown}; available {sorted(TASKS)}")
    prompts = [e.prompt for name, n in mix.items() for e in TASKS[name]("train", n, seed)]
    random.Random(seed).shuffle(prompts)
    return prompts


def tokenize_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    return [tokenizer(chat_prompt(p), add_special_tokens=False)["input_ids"] for p in prompts]
