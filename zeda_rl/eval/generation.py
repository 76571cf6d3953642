"""Response generation for evaluation: plain transformers here; vLLM plugs in behind the same
signature (``generate(model_dir, prompts, max_new_tokens) -> list[str]``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zeda_rl.data.tokenizer import chat_prompt


@torch.no_grad()
def hf_generate(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """Greedy chat completions with transformers (left padding, stop at the end-of-turn token)."""
    tokenizer.padding_side = "left"
    model.eval()
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        chunk = [chat_prompt(p) for p in prompts[i : i + batch_size]]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        generated = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        out += tokenizer.batch_decode(
            generated[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )
    return out
