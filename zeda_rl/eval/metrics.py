"""Zero-expert usage and teacher agreement, as the paper measures them (method.md section 5).

A routing trace of one request holds, for every token and MoE layer, how many of the K
slots went to real experts. Zero-expert ratio of a request = 1 - real slots / (tokens x
layers x K); aggregates weight requests by their slots, so they equal the ratio over all
slots pooled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class RoutingTrace:
    """Real experts used per token and MoE layer for one request."""

    real_per_token_layer: torch.Tensor  # [tokens, layers] ints in [0, K]
    top_k: int
    layer_ids: list[int]

    @property
    def slots(self) -> int:
        return int(self.real_per_token_layer.numel()) * self.top_k

    @property
    def real_slots(self) -> int:
        return int(self.real_per_token_layer.sum())


def zero_ratio(trace: RoutingTrace) -> float:
    """Share of the request's slots that went to zero experts."""
    return 1.0 - trace.real_slots / max(trace.slots, 1)


def pooled_zero_ratio(traces: Sequence[RoutingTrace]) -> float:
    slots = sum(t.slots for t in traces)
    return 1.0 - sum(t.real_slots for t in traces) / max(slots, 1)


def per_layer_zero_ratio(traces: Sequence[RoutingTrace]) -> dict[int, float]:
    if not traces:
        return {}
    real = torch.stack([t.real_per_token_layer.sum(0) for t in traces]).sum(0).float()
    tokens = sum(t.real_per_token_layer.shape[0] for t in traces)
    k = traces[0].top_k
    return {
        layer: 1.0 - float(r) / max(tokens * k, 1)
        for layer, r in zip(traces[0].layer_ids, real, strict=True)
    }


def per_token_real_experts(trace: RoutingTrace) -> list[float]:
    """Mean real experts per MoE layer for each token (0..K)."""
    return trace.real_per_token_layer.float().mean(dim=1).tolist()


def model_flops_per_token(config) -> dict[str, float]:
    """Forward FLOPs per token by part (2 x multiply-adds; attention scores excluded, so this
    is the short-context figure)."""
    h = config.hidden_size
    vocab = config.vocab_size
    layers = config.num_hidden_layers
    k = config.num_experts_per_tok
    inter = config.moe_intermediate_size
    routed = 2 * 3 * h * inter * k
    if hasattr(config, "kv_lora_rank"):  # MLA (GLM)
        heads = config.num_attention_heads
        q = (
            h * config.q_lora_rank + config.q_lora_rank * heads * config.qk_head_dim
            if config.q_lora_rank
            else h * heads * config.qk_head_dim
        )
        kv = h * (config.kv_lora_rank + config.qk_rope_head_dim) + config.kv_lora_rank * heads * (
            config.qk_nope_head_dim + config.v_head_dim
        )
        attn = 2 * (q + kv + heads * config.v_head_dim * h)
        shared = 2 * 3 * h * inter * getattr(config, "n_shared_experts", 0)
        moe_layers = sum(t == "sparse" for t in config.mlp_layer_types)
        router = 2 * h * getattr(config, "num_router_experts", config.n_routed_experts)
    else:
        d = config.head_dim
        attn = 2 * h * d * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
        shared = 0
        moe_layers = layers - len(getattr(config, "mlp_only_layers", []) or [])
        router = 2 * h * getattr(config, "num_router_experts", config.num_experts)
    dense = 2 * 3 * h * config.intermediate_size * (layers - moe_layers)
    return {
        "attention": attn * layers,
        "routed_experts": routed * moe_layers,
        "shared_experts": shared * moe_layers,
        "router": router * moe_layers,
        "dense_mlp": dense,
        "lm_head": 2 * h * vocab,
    }


def model_flops_saved(config, zero_ratio_value: float) -> float:
    """Share of a token's forward FLOPs (short context) removed by skipping zero picks."""
    parts = model_flops_per_token(config)
    return parts["routed_experts"] * zero_ratio_value / sum(parts.values())


@dataclass
class Agreement:
    reverse_kl: float  # mean over tokens of KL(student || teacher)
    top1: float  # share of tokens whose argmax agrees
    tokens: int


def teacher_agreement(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor
) -> Agreement:
    """Per-token reverse KL and top-1 agreement over the positions where ``mask`` is true.

    Logits are ``[..., vocab]`` at the same positions (same tokenization); the vocabularies
    must match, which ZEDA guarantees (the student is the teacher plus zero experts).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit shapes differ: {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}"
        )
    log_s = torch.log_softmax(student_logits.float(), dim=-1)[mask]
    log_t = torch.log_softmax(teacher_logits.float(), dim=-1)[mask]
    kl = (log_s.exp() * (log_s - log_t)).sum(-1)
    top1 = (log_s.argmax(-1) == log_t.argmax(-1)).float()
    n = int(mask.sum())
    return Agreement(float(kl.mean()) if n else 0.0, float(top1.mean()) if n else 0.0, n)
