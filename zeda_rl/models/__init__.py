"""ZEDA model families (transformers implementations) and their registration."""

from zeda_rl.models.configuration import (
    Glm4MoeLitePlusPlusConfig,
    Qwen3MoePlusPlusConfig,
    ZedaGlm4MoeLiteConfig,
    ZedaQwen3MoeConfig,
)
from zeda_rl.models.glm4_moe_lite import (
    Glm4MoeLitePlusPlusForCausalLM,
    ZedaGlm4MoeLiteForCausalLM,
    ZedaGlm4MoeLiteModel,
)
from zeda_rl.models.modeling_common import ZedaCausalLMOutput, zero_expert_ratio
from zeda_rl.models.qwen3_moe import (
    Qwen3MoePlusPlusForCausalLM,
    ZedaQwen3MoeForCausalLM,
    ZedaQwen3MoeModel,
)
from zeda_rl.models.registry import load_zeda_model, register
from zeda_rl.models.zero_experts import LayerRouting, RoutingState

__all__ = [
    "Glm4MoeLitePlusPlusConfig",
    "Glm4MoeLitePlusPlusForCausalLM",
    "LayerRouting",
    "Qwen3MoePlusPlusConfig",
    "Qwen3MoePlusPlusForCausalLM",
    "RoutingState",
    "ZedaCausalLMOutput",
    "ZedaGlm4MoeLiteConfig",
    "ZedaGlm4MoeLiteForCausalLM",
    "ZedaGlm4MoeLiteModel",
    "ZedaQwen3MoeConfig",
    "ZedaQwen3MoeForCausalLM",
    "ZedaQwen3MoeModel",
    "load_zeda_model",
    "register",
    "zero_expert_ratio",
]
