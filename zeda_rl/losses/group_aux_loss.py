"""Group Auxiliary Loss (GAL), method.md section 2.

Two groups per MoE layer, real experts E (N) and zero experts Z (N_Z); no balancing inside
the real group, so the teacher's routing among real experts is left alone::

    code  (default): L = alpha * (N + w N_Z)     * (f_E P_E / N + f_Z P_Z / (w N_Z))
    paper          : L = alpha * (N + w N_Z) / K * (f_E P_E / N + f_Z P_Z / (w N_Z))

f are pick shares (no gradient), P summed mean routing scores (gradient to the router).
With f = P = share, the loss is minimal at the target zero share r* = w N_Z / (w N_Z + N).
Per layer, per micro-batch; the per-layer losses are summed (each layer's router receives
its own loss, as Megatron's auxiliary losses do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import torch

from zeda_rl.models.zero_experts import LayerRouting


class GalScaling(StrEnum):
    code = "code"  # the authors' code
    paper = "paper"  # the paper's formula: divided by K


class GalTokens(StrEnum):
    all = "all"  # the method: every valid token, prompt included
    # only the positions that generate response tokens, where a served model's skipping is
    # evaluated (an ablation for short responses)
    response = "response"


@dataclass
class GroupAuxLossConfig:
    alpha: float = 0.1  # loss coefficient
    zero_expert_weight: float = 2.0  # w: larger means more skipping
    scaling: GalScaling = GalScaling.code
    # Which positions the statistics count.
    tokens: GalTokens = GalTokens.all

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"group_aux_loss.alpha must be >= 0, got {self.alpha}")
        if self.zero_expert_weight <= 0:
            raise ValueError(
                f"group_aux_loss.zero_expert_weight must be > 0, got {self.zero_expert_weight}"
            )
        # Built directly (tests, scripts) with strings: the enums refuse anything else.
        for name, kind in (("scaling", GalScaling), ("tokens", GalTokens)):
            value = getattr(self, name)
            if value not in set(kind):
                raise ValueError(
                    f"group_aux_loss.{name} must be one of {[k.value for k in kind]}, got {value!r}"
                )
            setattr(self, name, kind(value))


def target_zero_ratio(num_real: int, num_zero: int, zero_expert_weight: float) -> float:
    """The zero-pick share the loss steers to: w N_Z / (w N_Z + N)."""
    weighted_zero = zero_expert_weight * num_zero
    return weighted_zero / (weighted_zero + num_real)


def group_aux_loss_terms(
    f_real: torch.Tensor,
    p_real: torch.Tensor,
    f_zero: torch.Tensor,
    p_zero: torch.Tensor,
    *,
    num_real: int,
    num_zero: int,
    top_k: int,
    config: GroupAuxLossConfig,
) -> torch.Tensor:
    """One layer's GAL from its group statistics (tensors of any matching shape)."""
    weighted_zero = config.zero_expert_weight * num_zero
    scale = config.alpha * (num_real + weighted_zero)
    if config.scaling == "paper":
        scale = scale / top_k
    return scale * (f_real * p_real / num_real + f_zero * p_zero / weighted_zero)


def group_aux_loss(
    routing: Sequence[LayerRouting],
    *,
    num_real: int,
    num_zero: int,
    top_k: int,
    config: GroupAuxLossConfig | None = None,
) -> torch.Tensor:
    """Sum over MoE layers of the GAL computed from each layer's recorded statistics."""
    config = config or GroupAuxLossConfig()
    if not routing:
        raise ValueError("group_aux_loss needs at least one MoE layer's routing statistics")
    if num_zero < 1:
        raise ValueError("group_aux_loss needs zero experts (num_zero >= 1)")
    losses = [
        group_aux_loss_terms(
            r.f_real,
            r.p_real,
            r.f_zero,
            r.p_zero,
            num_real=num_real,
            num_zero=num_zero,
            top_k=top_k,
            config=config,
        )
        for r in routing
    ]
    return torch.stack(losses).sum()
