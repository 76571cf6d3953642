"""Dense distillation on the teacher's top-k: the exact reverse KL of a coarsened vocabulary.

The method's stage-2 signal (opd_loss.py) is one sample per position: the advantage
``log p_T(y_t) - log p_S(y_t)`` of the token the student happened to draw. At tiny scale
(~700 response tokens per step) that estimate is mostly noise. The teacher's engine can
return its top-k log-probabilities at every position for the same prefill, and with them
the reverse KL of the distribution coarsened to k + 1 outcomes (the teacher's k most likely
tokens, and "any other token") is exact:

    KL_k(S || T) = sum_j p_S(j) (log p_S(j) - log p_T(j)) + p_S(rest) (log p_S(rest) - log p_T(rest))

It is a lower bound of the full reverse KL (merging outcomes never raises a KL) and equals
it when the teacher's tail outside its top-k is negligible, as it is for a confident model.
Differentiating it moves the student's whole distribution at every position, not one
sampled token. A tiny-scale option (``stage2.loss=topk_kl``), not the paper's loss.
"""

from __future__ import annotations

import torch

from zeda_rl.losses.objective import Objective, register_objective

# Teacher tail mass floor: a top-k that holds all the mass in float32 leaves log(0).
_MIN_TAIL = 1e-6


def topk_reverse_kl(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reverse KL(student || teacher) over the teacher's top-k plus one tail bucket, summed
    over ``mask`` and divided by ``normalizer`` (default: this batch's masked positions).

    ``logits [B, S, V]`` the student's (temperature 1), ``topk_ids / teacher_topk_logprobs
    [B, S, k]`` the teacher's top-k at the same positions, ``mask [B, S]``.
    """
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1, keepdim=True)
    student_k = logits.gather(-1, topk_ids) - log_z
    rest = logits.scatter(-1, topk_ids, float("-inf"))
    student_rest = torch.logsumexp(rest, dim=-1, keepdim=True) - log_z
    teacher_k = teacher_topk_logprobs.float()
    teacher_mass = teacher_k.exp().sum(-1, keepdim=True).clamp(max=1.0 - _MIN_TAIL)
    teacher_rest = torch.log1p(-teacher_mass)
    student = torch.cat([student_k, student_rest], dim=-1)
    teacher = torch.cat([teacher_k, teacher_rest], dim=-1)
    # Finite logits give finite log-probabilities on both sides (V > k leaves a tail).
    per_position = (student.exp() * (student - teacher)).sum(-1)
    mask = mask.to(per_position.dtype)
    count = float(normalizer) if normalizer is not None else float(mask.sum().clamp(min=1))
    loss = (per_position * mask).sum() / count
    with torch.no_grad():
        stats = {
            "tokens": float(mask.sum()),
            "reverse_kl_sum": float((per_position * mask).sum()),
            "teacher_tail_sum": float(((1.0 - teacher_mass.squeeze(-1)) * mask).sum()),
        }
    return loss, stats


@register_objective
class TopKKLObjective(Objective):
    """``topk_kl``: the top-k reverse KL at the positions the teacher's top-k covers (the
    responses, or every fed position with ``stage2.kl_positions=all``), and the rollout vs
    trainer log-prob gap of the sampled tokens (the same train/serve check as OPD's)."""

    name = "topk_kl"
    label = "stage 2 (top-k KL)"
    on_policy = True
    stat_keys = (
        "reverse_kl_sum",
        "teacher_tail_sum",
        "train_rollout_logprob_abs_diff_sum",
        "response_tokens_sum",
    )

    def normalizer(self, samples) -> int:
        return sum(len(s.teacher_topk_ids) for s in samples)

    def loss(self, logits, logp, batch, normalizer):
        if batch.teacher_topk_ids is None or batch.rollout_logprobs is None:
            raise ValueError("topk_kl needs the teacher's top-k and the rollout logprobs")
        main, stats = topk_reverse_kl(
            logits,
            batch.teacher_topk_ids,
            batch.teacher_topk_logprobs,
            batch.teacher_topk_mask,
            normalizer=normalizer,
        )
        mask = batch.loss_mask.to(logp.dtype)
        gap = ((logp.detach() - batch.rollout_logprobs).abs() * mask).sum()
        stats["train_rollout_logprob_abs_diff_sum"] = float(gap)
        stats["response_tokens_sum"] = float(mask.sum())
        return main, {k: stats[k] for k in self.stat_keys}

    def metrics(self, sums, normalizer):
        response_tokens = max(sums["response_tokens_sum"], 1.0)
        return {
            "reverse_kl": sums["reverse_kl_sum"] / normalizer,
            "teacher_tail": sums["teacher_tail_sum"] / normalizer,
            "train_rollout_logprob_diff": sums["train_rollout_logprob_abs_diff_sum"]
            / response_tokens,
        }
