"""The ZEDA sparse MoE block shared by both model families.

Parameter names match transformers' MoE blocks (``gate.weight``, ``experts.gate_up_proj``,
``experts.down_proj``; GLM adds ``gate.e_score_correction_bias`` and ``shared_experts``),
so checkpoints load through transformers' own weight conversion; only the router has
``N + N_Z`` rows.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from zeda_kernels import grouped_experts_forward, opaque_grouped_experts
from zeda_rl.models.top_p import static_top_k_prune, top_p_prune
from zeda_rl.models.zero_experts import (
    RouterDecision,
    RoutingState,
    layer_routing_stats,
    router_dtype,
    sigmoid_route,
    softmax_route,
)


def route_by_config(
    config,
    logits: torch.Tensor,
    correction_bias: torch.Tensor | None = None,
    replay_ids: torch.Tensor | None = None,
) -> RouterDecision:
    """A ZEDA config's routing of router logits (shared with the vLLM plugin): GLM's sigmoid
    + correction bias when a bias is given, else Qwen3's softmax, with the zero experts'
    selection biased by ``config.zero_expert_bias``; then Top-P / static top-K' pruning when
    ``config.routing_top_p`` / ``routing_top_k`` is set (replayed routes are taken as they
    were recorded)."""
    zero_bias = float(getattr(config, "zero_expert_bias", 0.0) or 0.0)
    if correction_bias is not None:
        decision = sigmoid_route(
            logits,
            correction_bias,
            num_real=config.num_routed_experts,
            top_k=config.num_experts_per_tok,
            norm_topk_prob=config.norm_topk_prob,
            routed_scaling_factor=config.routed_scaling_factor,
            mask_zero_experts=config.mask_zero_experts,
            replay_ids=replay_ids,
            zero_bias=zero_bias,
        )
    else:
        decision = softmax_route(
            logits,
            num_real=config.num_routed_experts,
            top_k=config.num_experts_per_tok,
            norm_topk_prob=config.norm_topk_prob,
            mask_zero_experts=config.mask_zero_experts,
            replay_ids=replay_ids,
            zero_bias=zero_bias,
        )
    top_p = getattr(config, "routing_top_p", None)
    if top_p is not None and replay_ids is None:
        decision = top_p_prune(decision, num_real=config.num_routed_experts, top_p=top_p)
    top_k = getattr(config, "routing_top_k", None)
    if top_k is not None and replay_ids is None:
        decision = static_top_k_prune(decision, num_real=config.num_routed_experts, top_k=top_k)
    return decision


def routed_output(
    hidden: torch.Tensor,
    decision: RouterDecision,
    experts: nn.Module,
    *,
    num_real: int,
    activation,
    zero_expert_type: str,
    opaque: bool = False,
) -> torch.Tensor:
    """The routed experts' weighted output for one routing decision (shared with the vLLM
    plugin): real picks through the grouped dispatch, zero picks skipped. ``experts`` holds
    the real experts' ``gate_up_proj`` and ``down_proj`` (3D, transformers' layout).
    ``opaque`` runs the (SiLU) experts as one custom op that graph compilers do not trace
    (vLLM)."""
    args = (
        hidden,
        decision.topk_ids,
        decision.topk_weights,
        experts.gate_up_proj,
        experts.down_proj,
    )
    if opaque:
        out = opaque_grouped_experts(*args, num_real)
    else:
        out = grouped_experts_forward(*args, num_real_experts=num_real, activation=activation)
    if zero_expert_type == "copy":
        # MoE++ copy experts return their input: add weight * x, still no matmul.
        copy_weight = (decision.topk_weights * (decision.topk_ids >= num_real)).sum(-1)
        out = out + (copy_weight.unsqueeze(1) * hidden).to(out.dtype)
    return out


class ZedaExperts(nn.Module):
    """The N real experts as 3D tensors (transformers' layout); zero experts have no weights."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, act: str):
        super().__init__()
        self.num_experts = num_experts
        self.gate_up_proj = nn.Parameter(
            torch.empty(num_experts, 2 * intermediate_size, hidden_size)
        )
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self.act_fn = ACT2FN[act]


class ZedaSoftmaxRouter(nn.Module):
    """Qwen3-MoE router over N + N_Z experts; runs in the activation dtype like the original."""

    def __init__(self, num_router_experts: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_router_experts, hidden_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self.weight)


class ZedaSigmoidRouter(nn.Module):
    """GLM router over N + N_Z experts: fp32 logits and a frozen correction bias (a buffer)."""

    def __init__(self, num_router_experts: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_router_experts, hidden_size))
        self.e_score_correction_bias = nn.Buffer(
            torch.zeros(num_router_experts, dtype=torch.float32)
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        dtype = router_dtype(hidden)
        return nn.functional.linear(hidden.to(dtype), self.weight.to(dtype))


class ZedaMoeBlock(nn.Module):
    """Route over real + zero experts, compute only the real picks, record the statistics."""

    def __init__(self, config, layer_idx: int, routing_state: RoutingState):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_real = config.num_routed_experts
        self.num_zero = config.num_zero_experts
        self.top_k = config.num_experts_per_tok
        self.zero_expert_type = config.zero_expert_type
        self.config = config
        # Plain attribute, not a submodule: one state object is shared by all blocks.
        self.routing_state = routing_state
        self.experts = ZedaExperts(
            self.num_real, config.hidden_size, config.moe_intermediate_size, config.hidden_act
        )

    def route(self, hidden: torch.Tensor, replay_ids: torch.Tensor | None) -> RouterDecision:
        raise NotImplementedError

    def shared_output(self, hidden: torch.Tensor) -> torch.Tensor | None:
        return None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        hidden = hidden_states.reshape(-1, shape[-1])
        decision = self.route(hidden, self.routing_state.take_replay(self.layer_idx))
        out = routed_output(
            hidden,
            decision,
            self.experts,
            num_real=self.num_real,
            activation=self.experts.act_fn,
            zero_expert_type=self.zero_expert_type,
        )
        self.routing_state.records[self.layer_idx] = layer_routing_stats(
            decision,
            num_real=self.num_real,
            layer_idx=self.layer_idx,
            token_mask=self.routing_state.tokens_mask_for(hidden.shape[0]),
        )
        shared = self.shared_output(hidden)
        if shared is not None:
            out = out + shared
        return out.reshape(shape)


class ZedaSoftmaxMoeBlock(ZedaMoeBlock):
    """Qwen3-MoE block with zero experts."""

    def __init__(self, config, layer_idx: int, routing_state: RoutingState):
        super().__init__(config, layer_idx, routing_state)
        self.gate = ZedaSoftmaxRouter(self.num_real + self.num_zero, config.hidden_size)

    def route(self, hidden: torch.Tensor, replay_ids: torch.Tensor | None) -> RouterDecision:
        return route_by_config(self.config, self.gate(hidden), replay_ids=replay_ids)


class ZedaSigmoidMoeBlock(ZedaMoeBlock):
    """GLM-4.7-Flash block with zero experts and the always-on shared expert."""

    def __init__(
        self, config, layer_idx: int, routing_state: RoutingState, shared_experts: nn.Module
    ):
        super().__init__(config, layer_idx, routing_state)
        self.gate = ZedaSigmoidRouter(self.num_real + self.num_zero, config.hidden_size)
        self.shared_experts = shared_experts

    def route(self, hidden: torch.Tensor, replay_ids: torch.Tensor | None) -> RouterDecision:
        return route_by_config(
            self.config, self.gate(hidden), self.gate.e_score_correction_bias, replay_ids
        )

    def shared_output(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.shared_experts(hidden)
