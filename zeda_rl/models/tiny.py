"""Tiny static MoE configs of both families, shaped so vLLM's CPU backend can serve them.

Used by the tests, the demo and the benchmarks. vLLM on CPU needs an attention head_dim in
its supported set (32 here) and, for GLM's MLA, kv_lora_rank + qk_rope_head_dim = 576.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Glm4MoeLiteConfig, Qwen3MoeConfig

from zeda_rl.families import QWEN3_MOE, get_family


def tiny_qwen3_moe_config(**overrides: Any) -> Qwen3MoeConfig:
    fields: dict[str, Any] = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=False,
    )
    fields.update(overrides)
    return Qwen3MoeConfig(**fields)


def tiny_glm4_moe_lite_config(**overrides: Any) -> Glm4MoeLiteConfig:
    fields: dict[str, Any] = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=3,  # first layer dense, as in GLM-4.7-Flash
        num_attention_heads=2,
        num_key_value_heads=2,
        q_lora_rank=32,
        kv_lora_rank=512,
        qk_nope_head_dim=32,
        qk_rope_head_dim=64,
        v_head_dim=32,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        routed_scaling_factor=1.8,
        norm_topk_prob=True,
        n_group=1,
        topk_group=1,
        max_position_embeddings=512,
        first_k_dense_replace=1,  # vLLM reads it from config.json
        tie_word_embeddings=False,
    )
    fields.update(overrides)
    return Glm4MoeLiteConfig(**fields)


def random_static_model(family: str, seed: int, **overrides: Any) -> torch.nn.Module:
    """A random tiny static MoE whose routing is decisive (router weights ~ N(0, 0.5), as
    trained routers are, rather than near-uniform) and, for GLM, a non-zero correction bias."""
    from transformers import Glm4MoeLiteForCausalLM, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    family = get_family(family).name
    if family == QWEN3_MOE.name:
        model = Qwen3MoeForCausalLM(tiny_qwen3_moe_config(**overrides))
    else:
        model = Glm4MoeLiteForCausalLM(tiny_glm4_moe_lite_config(**overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                param.normal_(0.0, 0.5)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.normal_(0.0, 0.05)
    return model.eval()
