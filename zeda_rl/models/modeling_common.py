"""Pieces both ZEDA model families share: the output type, the causal-LM forward, weight init."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import initialization as init
from transformers.modeling_outputs import MoeCausalLMOutputWithPast

from zeda_rl.models.moe_block import ZedaExperts, ZedaSigmoidRouter, ZedaSoftmaxRouter
from zeda_rl.models.zero_experts import LayerRouting, RoutingState


@dataclass
class ZedaCausalLMOutput(MoeCausalLMOutputWithPast):
    """transformers' MoE output plus one :class:`LayerRouting` per MoE layer."""

    routing: list[LayerRouting] | None = None


def zero_expert_ratio(routing: list[LayerRouting]) -> float:
    """Share of all valid (token, layer, slot) picks that landed on zero experts."""
    if not routing:
        return 0.0
    total = sum(r.num_tokens for r in routing)
    return float(sum(r.zero_ratio.item() * r.num_tokens for r in routing) / max(total, 1))


def init_zeda_weights(module: torch.nn.Module, std: float) -> None:
    """Random init of the modules transformers' own ``_init_weights`` does not know."""
    if isinstance(module, (ZedaSoftmaxRouter, ZedaSigmoidRouter)):
        init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, ZedaSigmoidRouter):
            init.zeros_(module.e_score_correction_bias)
    elif isinstance(module, ZedaExperts):
        init.normal_(module.gate_up_proj, mean=0.0, std=std)
        init.normal_(module.down_proj, mean=0.0, std=std)


def _current_token_mask(
    attention_mask: torch.Tensor | None, num_new_tokens: int
) -> torch.Tensor | None:
    """Flattened [B * S] validity of the tokens in this forward (2D masks only)."""
    if attention_mask is None or attention_mask.dim() != 2:
        return None
    return attention_mask[:, -num_new_tokens:].reshape(-1).bool()


class ZedaCausalLMMixin:
    """Wraps the family's causal-LM forward: opens the routing state, returns its records.

    Extra keyword: ``routing_replay`` maps MoE layer index -> ``[B * S, K]`` expert ids
    (zero experts included) to replay instead of routing afresh (R3); every given layer must
    be consumed, or the forward raises.
    """

    model: torch.nn.Module

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        routing_replay: dict[int, torch.Tensor] | None = None,
        routing_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> ZedaCausalLMOutput:
        """``routing_mask`` ([B, S] bool): the positions the routing statistics count
        (default: the attention mask's valid tokens)."""
        state: RoutingState = self.model.routing_state
        tokens = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if routing_mask is not None:
            token_mask = routing_mask.reshape(-1).bool()
        else:
            token_mask = (
                None if tokens is None else _current_token_mask(attention_mask, tokens.shape[1])
            )
        state.begin(token_mask, routing_replay)
        try:
            kwargs["output_router_logits"] = False  # transformers' own balancing loss: not ours
            out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        except BaseException:
            state.begin(None, None)
            raise
        return ZedaCausalLMOutput(
            loss=out.loss,
            logits=out.logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            routing=state.end(),
        )
