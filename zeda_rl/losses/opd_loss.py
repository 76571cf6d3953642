"""On-policy distillation loss (method.md section 4): the method's stage-2 objective.

The student sampled ``y_t``; the frozen teacher scored it. The per-token advantage
``A_t = log p_T(y_t) - log p_S_old(y_t)`` is a one-sample estimate of the negative reverse
KL; the student follows it with a PPO-clipped policy gradient (no reward, no reference KL,
no entropy bonus). ``log p_S_old`` are the rollout engine's log-probabilities of the tokens
it sampled (the behaviour policy).
"""

from __future__ import annotations

import torch

from zeda_rl.losses.objective import Objective, register_objective


def opd_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clipped loss on the teacher advantage, summed over ``mask`` and divided by
    ``normalizer`` (the step's token count across all data-parallel ranks; default: this
    batch's). Returns the loss and detached statistics (sums, for all-reduce)."""
    mask = mask.to(logprobs.dtype)
    advantage = (teacher_logprobs - old_logprobs).detach()
    ratio = torch.exp(logprobs - old_logprobs.detach())
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantage
    per_token = -torch.minimum(unclipped, clipped)
    count = float(normalizer) if normalizer is not None else float(mask.sum().clamp(min=1))
    loss = (per_token * mask).sum() / count
    with torch.no_grad():
        stats = {
            "tokens": float(mask.sum()),
            # sum of the one-sample reverse-KL estimate log p_S - log p_T over tokens
            "reverse_kl_sum": float((-advantage * mask).sum()),
            "clipped_sum": float((((ratio - 1.0).abs() > clip).to(mask.dtype) * mask).sum()),
            "train_rollout_logprob_abs_diff_sum": float(
                ((logprobs - old_logprobs).abs() * mask).sum()
            ),
        }
    return loss, stats


@register_objective
class OpdObjective(Objective):
    name = "opd"
    label = "stage 2 (OPD)"
    on_policy = True
    stat_keys = ("reverse_kl_sum", "clipped_sum", "train_rollout_logprob_abs_diff_sum")

    def __init__(self, clip: float = 0.2):
        self.clip = clip

    def loss(self, logits, logp, batch, normalizer):
        if batch.rollout_logprobs is None or batch.teacher_logprobs is None:
            raise ValueError("on-policy distillation needs rollout and teacher logprobs")
        main, stats = opd_policy_loss(
            logp,
            batch.rollout_logprobs,
            batch.teacher_logprobs,
            batch.loss_mask,
            clip=self.clip,
            normalizer=normalizer,
        )
        return main, {k: stats[k] for k in self.stat_keys}

    def metrics(self, sums, normalizer):
        return {
            "reverse_kl": sums["reverse_kl_sum"] / normalizer,
            "clip_fraction": sums["clipped_sum"] / normalizer,
            "train_rollout_logprob_diff": sums["train_rollout_logprob_abs_diff_sum"] / normalizer,
        }
