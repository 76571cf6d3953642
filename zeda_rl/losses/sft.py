"""Stage 1: next-token NLL of the teacher's responses (method.md section 3)."""

from __future__ import annotations

import torch

from zeda_rl.losses.objective import Objective, register_objective


def response_nll(
    logprobs: torch.Tensor, mask: torch.Tensor, *, normalizer: float | None = None
) -> torch.Tensor:
    """Next-token NLL over response tokens, per-token averaged over ``normalizer``."""
    mask = mask.to(logprobs.dtype)
    count = float(normalizer) if normalizer is not None else float(mask.sum().clamp(min=1))
    return -(logprobs * mask).sum() / count


@register_objective
class SftObjective(Objective):
    name = "sft"
    label = "stage 1 (SFT)"
    stat_keys = ("nll_sum",)

    def loss(self, logits, logp, batch, normalizer):
        main = response_nll(logp, batch.loss_mask, normalizer=normalizer)
        return main, {"nll_sum": float(main.detach()) * normalizer}

    def metrics(self, sums, normalizer):
        return {"nll": sums["nll_sum"] / normalizer}
