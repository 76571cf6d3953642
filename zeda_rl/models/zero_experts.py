"""Zero-expert routing: method.md section 1, for softmax (Qwen3) and sigmoid (GLM) routers.

A router scores ``N`` real experts plus ``N_Z`` parameter-free zero experts appended at
indices ``[N, N + N_Z)``. Top-K stays fixed, so zero experts compete for the same K slots
and a token uses between 0 and K real experts. Gate weights are renormalised over the K
chosen slots *including* zero slots; the mass that landed on zero slots is then dropped,
not redistributed (the dispatch simply skips those slots).

``mask_zero_experts`` sends zero experts out of the competition (logits / choice scores
to -inf), which turns the model back into the original static MoE exactly.

``zero_bias`` is the serve-time compute dial: it is added to the zero experts' *selection*
scores only (Qwen3: their log-probabilities; GLM: score + correction bias), so a positive
value lets zero experts win more of the K slots. The weights of the chosen slots are the
unbiased ones, renormalised over the K slots as always, so a chosen real expert is weighted
exactly as the checkpoint would weight it next to the same companions. 0 is the model as
trained (bit-exact: the bias is not even added).

Besides the routing decision, each router returns what the Group Auxiliary Loss needs
(``loss_probs``, ``loss_topk_ids``), so GAL statistics come from the same forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ZERO_EXPERT_TYPES = ("zero", "copy")


@dataclass
class RouterDecision:
    """One layer's routing for T tokens."""

    topk_ids: torch.Tensor  # [T, K] long; ids >= num_real are zero experts
    topk_weights: torch.Tensor  # [T, K] final gate weights (zero slots included, dropped later)
    loss_probs: torch.Tensor  # [T, N + N_Z] scores the group aux loss uses (rows sum to 1)
    loss_topk_ids: torch.Tensor  # [T, K] selection the loss counts (f_E, f_Z)


def router_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Routing math runs in fp32 at least (fp64 stays fp64, e.g. in reference tests)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _mask_zero_columns(scores: torch.Tensor, num_real: int, fill: float) -> torch.Tensor:
    column = torch.arange(scores.shape[-1], device=scores.device) >= num_real
    return scores.masked_fill(column, fill)


def _bias_zero_columns(scores: torch.Tensor, num_real: int, bias: float) -> torch.Tensor:
    if bias == 0.0:
        return scores
    column = torch.arange(scores.shape[-1], device=scores.device) >= num_real
    return scores + column.to(scores.dtype) * bias


def _replayed(replay_ids: torch.Tensor, num_tokens: int, top_k: int) -> torch.Tensor:
    if replay_ids.shape != (num_tokens, top_k):
        raise ValueError(
            f"replayed expert ids have shape {tuple(replay_ids.shape)}, expected ({num_tokens}, {top_k})"
        )
    return replay_ids.long()


def softmax_route(
    logits: torch.Tensor,
    *,
    num_real: int,
    top_k: int,
    norm_topk_prob: bool,
    mask_zero_experts: bool,
    replay_ids: torch.Tensor | None = None,
    zero_bias: float = 0.0,
) -> RouterDecision:
    """Qwen3-MoE routing: softmax over all N + N_Z logits, top-K, renormalise over K slots."""
    if mask_zero_experts:
        logits = _mask_zero_columns(logits, num_real, float("-inf"))
    probs = F.softmax(logits, dim=-1, dtype=router_dtype(logits))
    if replay_ids is None and zero_bias != 0.0 and not mask_zero_experts:
        # Rank by biased log-probabilities; weigh the chosen slots by the unbiased ones.
        choice = _bias_zero_columns(torch.log(probs), num_real, zero_bias)
        topk_ids = torch.topk(choice, top_k, dim=-1)[1]
        top_probs = probs.gather(1, topk_ids)
    elif replay_ids is None:
        top_probs, topk_ids = torch.topk(probs, top_k, dim=-1)
    else:
        topk_ids = _replayed(replay_ids, probs.shape[0], top_k)
        top_probs = probs.gather(1, topk_ids)
    if norm_topk_prob:
        top_probs = top_probs / top_probs.sum(dim=-1, keepdim=True)
    return RouterDecision(
        topk_ids=topk_ids,
        topk_weights=top_probs.to(logits.dtype),
        loss_probs=probs,
        loss_topk_ids=topk_ids,
    )


def sigmoid_route(
    logits: torch.Tensor,
    correction_bias: torch.Tensor,
    *,
    num_real: int,
    top_k: int,
    norm_topk_prob: bool,
    routed_scaling_factor: float,
    mask_zero_experts: bool,
    replay_ids: torch.Tensor | None = None,
    zero_bias: float = 0.0,
) -> RouterDecision:
    """GLM-4.7-Flash routing (n_group = topk_group = 1).

    Top-K by sigmoid score + correction bias; weights are the chosen scores without the bias,
    normalised over the K slots (zero slots included), times ``routed_scaling_factor``.
    """
    scores = torch.sigmoid(logits.to(router_dtype(logits)))
    if mask_zero_experts:
        # Mask the *choice* scores: masking logits before the sigmoid (score 0) would still
        # let a zero expert win through a large correction bias.
        scores = _mask_zero_columns(scores, num_real, 0.0)
    if replay_ids is None:
        choice = scores + correction_bias.to(scores.dtype)
        if mask_zero_experts:
            choice = _mask_zero_columns(choice, num_real, float("-inf"))
        else:
            choice = _bias_zero_columns(choice, num_real, zero_bias)
        topk_ids = torch.topk(choice, top_k, dim=-1, sorted=False)[1]
    else:
        topk_ids = _replayed(replay_ids, scores.shape[0], top_k)
    weights = scores.gather(1, topk_ids)
    if norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    weights = weights * routed_scaling_factor
    # The loss sees the scores normalised to a distribution, without the bias, and counts a
    # fresh top-K on them (method.md section 2).
    loss_probs = scores / (scores.sum(dim=-1, keepdim=True) + 1e-20)
    loss_topk_ids = torch.topk(loss_probs.detach(), top_k, dim=-1)[1]
    return RouterDecision(
        topk_ids=topk_ids, topk_weights=weights, loss_probs=loss_probs, loss_topk_ids=loss_topk_ids
    )


@dataclass
class LayerRouting:
    """What one MoE layer reports per forward (valid tokens only)."""

    layer_idx: int
    topk_ids: torch.Tensor  # [T, K] chosen slots, zero experts included (for replay and eval)
    real_experts_per_token: torch.Tensor  # [T] number of real experts each token used
    token_mask: torch.Tensor | None  # [T] bool, False for padding
    zero_ratio: torch.Tensor  # scalar: share of valid slots that landed on zero experts
    f_real: torch.Tensor  # scalar, no grad: share of (loss) picks on real experts
    f_zero: torch.Tensor  # scalar, no grad
    p_real: torch.Tensor  # scalar, differentiable: summed mean routing score of real experts
    p_zero: torch.Tensor  # scalar, differentiable
    num_tokens: int  # valid tokens counted


def layer_routing_stats(
    decision: RouterDecision, *, num_real: int, layer_idx: int, token_mask: torch.Tensor | None
) -> LayerRouting:
    """Group statistics f_E, f_Z, P_E, P_Z and the zero-expert ratio over valid tokens."""
    top_k = decision.topk_ids.shape[1]
    if token_mask is None:
        weight = torch.ones(decision.topk_ids.shape[0], device=decision.topk_ids.device)
    else:
        weight = token_mask.to(torch.float32)
    num_valid = weight.sum().clamp(min=1.0)
    real_per_token = (decision.topk_ids < num_real).sum(dim=-1)
    zero_ratio = 1.0 - (real_per_token.float() * weight).sum() / (num_valid * top_k)
    zero_picks = (decision.loss_topk_ids >= num_real).float().sum(dim=-1)
    f_zero = ((zero_picks * weight).sum() / (num_valid * top_k)).detach()
    probs = decision.loss_probs
    p_real = (probs[:, :num_real].sum(dim=-1) * weight).sum() / num_valid
    p_zero = (probs[:, num_real:].sum(dim=-1) * weight).sum() / num_valid
    return LayerRouting(
        layer_idx=layer_idx,
        topk_ids=decision.topk_ids.detach(),
        real_experts_per_token=real_per_token.detach(),
        token_mask=token_mask,
        zero_ratio=zero_ratio.detach(),
        f_real=1.0 - f_zero,
        f_zero=f_zero,
        p_real=p_real,
        p_zero=p_zero,
        num_tokens=int(num_valid.item()),
    )


@dataclass
class RoutingState:
    """Per-forward routing context shared by a model's MoE blocks.

    The causal-LM forward opens it (token mask, optional replayed expert ids per layer),
    each MoE block records its :class:`LayerRouting`, and the forward closes it.
    A layer recomputed under activation checkpointing simply overwrites its record.
    """

    token_mask: torch.Tensor | None = None
    replay: dict[int, torch.Tensor] | None = None
    records: dict[int, LayerRouting] = field(default_factory=dict)
    replayed_layers: set[int] = field(default_factory=set)

    def begin(
        self, token_mask: torch.Tensor | None, replay: dict[int, torch.Tensor] | None = None
    ) -> None:
        self.token_mask = token_mask
        self.replay = replay
        self.records = {}
        self.replayed_layers = set()

    def take_replay(self, layer_idx: int) -> torch.Tensor | None:
        if self.replay is None:
            return None
        if layer_idx not in self.replay:
            raise KeyError(f"routing replay has no expert ids for MoE layer {layer_idx}")
        self.replayed_layers.add(layer_idx)
        return self.replay[layer_idx]

    def tokens_mask_for(self, num_tokens: int) -> torch.Tensor | None:
        if self.token_mask is None or self.token_mask.numel() != num_tokens:
            return None
        return self.token_mask

    def end(self) -> list[LayerRouting]:
        if self.replay is not None:
            unused = sorted(set(self.replay) - self.replayed_layers)
            if unused:
                raise RuntimeError(f"routing replay for layers {unused} was never consumed")
        records = [self.records[i] for i in sorted(self.records)]
        self.token_mask, self.replay = None, None
        return records
