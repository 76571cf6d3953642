"""Training-free routing baselines: Top-P, the cheapest dynamic-MoE baseline (method.md
section 7), and static top-K' (every token keeps its K' < K largest picks).

A token keeps its real-expert picks, largest gate weight first, until the kept weights
reach ``top_p`` of its whole real gate mass; the other picks become zero-expert picks
(skipped by the dispatch, counted by the zero-expert ratio) and the kept weights are
rescaled to the whole mass, so the token's expert output keeps its scale. ``top_p = 1``
keeps every pick.

Set ``routing_top_p`` on a ZEDA config together with ``mask_zero_experts=True`` and the
converted model is the original static MoE under Top-P routing: the baseline ZEDA's
students are compared with at the same share of skipped expert picks
(``python -m zeda_rl.eval --mask-zero-experts --routing-top-p P``, ``eval.top_p_baselines``).
"""

from __future__ import annotations

import torch

from zeda_rl.models.zero_experts import RouterDecision


def top_p_prune(decision: RouterDecision, *, num_real: int, top_p: float) -> RouterDecision:
    """``decision`` with each token's real picks cut to the smallest set, by descending
    weight, whose weight reaches ``top_p`` of the token's real gate mass. Pruned picks get
    zero-expert id ``num_real`` and weight 0; the loss fields are left as they are."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"routing_top_p={top_p} must be in (0, 1]")

    def keep(ranked: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        before = ranked.cumsum(-1) - ranked  # mass of the larger picks ahead of each one
        return before < top_p * total

    return _prune(decision, num_real, keep)


def static_top_k_prune(decision: RouterDecision, *, num_real: int, top_k: int) -> RouterDecision:
    """``decision`` with each token's real picks cut to its ``top_k`` largest (static top-K',
    the cheapest fixed-compute baseline: exactly 1 - K'/K of the slots skipped on a static
    MoE). Kept weights are rescaled to the whole mass, as Top-P's are."""
    if top_k < 1:
        raise ValueError(f"routing_top_k={top_k} must be >= 1")

    def keep(ranked: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        return torch.arange(ranked.shape[-1], device=ranked.device) < top_k

    return _prune(decision, num_real, keep)


def _prune(decision: RouterDecision, num_real: int, keep_ranked_fn) -> RouterDecision:
    """Keep the real picks that ``keep_ranked_fn(ranked_mass, total_mass)`` selects among a
    token's picks sorted by descending weight; the rest become zero-expert picks."""
    ids, weights = decision.topk_ids, decision.topk_weights
    real = ids < num_real
    mass = torch.where(real, weights.float(), 0.0)
    total = mass.sum(-1, keepdim=True)
    order = torch.sort(mass, dim=-1, descending=True, stable=True).indices
    ranked = mass.gather(-1, order)
    keep_ranked = keep_ranked_fn(ranked, total) & (ranked > 0)
    keep = torch.zeros_like(keep_ranked).scatter(-1, order, keep_ranked) & real
    kept_mass = (mass * keep).sum(-1, keepdim=True)
    scale = total / kept_mass.clamp_min(torch.finfo(torch.float32).tiny)
    new_weights = torch.where(keep, weights.float() * scale, 0.0)
    # Zero picks of a ZEDA router stay what they were (a copy expert keeps its weight).
    new_weights = torch.where(real, new_weights, weights.float()).to(weights.dtype)
    new_ids = torch.where(keep | ~real, ids, torch.full_like(ids, num_real))
    return RouterDecision(
        topk_ids=new_ids,
        topk_weights=new_weights,
        loss_probs=decision.loss_probs,
        loss_topk_ids=decision.loss_topk_ids,
    )


def routing_overrides(
    *,
    mask_zero_experts: bool = False,
    routing_top_p: float | None = None,
    routing_top_k: int | None = None,
    zero_expert_bias: float | None = None,
) -> dict:
    """The ZEDA config fields of an evaluated routing variant of a checkpoint, for
    ``from_pretrained(dir, **fields)`` and vLLM's ``hf_overrides`` (empty: as saved)."""
    fields: dict = {}
    if mask_zero_experts:
        fields["mask_zero_experts"] = True
    if routing_top_p is not None:
        fields["routing_top_p"] = float(routing_top_p)
    if routing_top_k is not None:
        fields["routing_top_k"] = int(routing_top_k)
    if zero_expert_bias is not None:
        fields["zero_expert_bias"] = float(zero_expert_bias)
    return fields
