"""The model families ZEDA adapts, in one place: every module and test reads these facts
instead of restating them. Importing this module imports nothing heavy.

A family is named by the static model's transformers ``model_type``. Its ZEDA checkpoints
carry the project's model_type and architecture (``zeda_*``), or the authors' released
ones (``*_plus_plus``, which may keep the base model_type: the architecture name decides).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_VLLM_MODELS = "zeda_rl.vllm_plugin.models"


@dataclass(frozen=True)
class Family:
    name: str  # the static model's model_type
    hf_config: str  # transformers class names of the static model
    hf_causal_lm: str
    zeda_model_type: str
    zeda_architecture: str
    authors_model_type: str
    authors_architecture: str
    expert_count_key: str  # the config field holding N, the routed experts
    # softmax: top-K of softmax(logits), renormalised (Qwen3). sigmoid_bias: top-K of
    # sigmoid(logits) + a frozen correction bias, weights from the sigmoid, scaled (GLM).
    router: str
    shared_expert: bool
    # The config field counting the dense layers before the first MoE one (None: every
    # layer is MoE unless the config lists mlp_only_layers / a decoder_sparse_step).
    first_dense_key: str | None
    mla: bool  # multi-head latent attention (vLLM serves it with its MLA backend)
    vllm_class: str  # "module:Class" of the plugin's vLLM model

    @property
    def zeda_model_types(self) -> tuple[str, str]:
        return (self.zeda_model_type, self.authors_model_type)

    @property
    def zeda_architectures(self) -> tuple[str, str]:
        return (self.zeda_architecture, self.authors_architecture)

    def num_routed_experts(self, config: dict[str, Any]) -> int:
        return int(config.get(self.expert_count_key) or 0)


QWEN3_MOE = Family(
    name="qwen3_moe",
    hf_config="Qwen3MoeConfig",
    hf_causal_lm="Qwen3MoeForCausalLM",
    zeda_model_type="zeda_qwen3_moe",
    zeda_architecture="ZedaQwen3MoeForCausalLM",
    authors_model_type="qwen3_moe_plus_plus",
    authors_architecture="Qwen3MoePlusPlusForCausalLM",
    expert_count_key="num_experts",
    router="softmax",
    shared_expert=False,
    first_dense_key=None,
    mla=False,
    vllm_class=f"{_VLLM_MODELS}:ZedaQwen3MoeForCausalLM",
)
GLM4_MOE_LITE = Family(
    name="glm4_moe_lite",
    hf_config="Glm4MoeLiteConfig",
    hf_causal_lm="Glm4MoeLiteForCausalLM",
    zeda_model_type="zeda_glm4_moe_lite",
    zeda_architecture="ZedaGlm4MoeLiteForCausalLM",
    authors_model_type="glm4_moe_lite_plus_plus",
    authors_architecture="Glm4MoeLitePlusPlusForCausalLM",
    expert_count_key="n_routed_experts",
    router="sigmoid_bias",
    shared_expert=True,
    first_dense_key="first_k_dense_replace",
    mla=True,
    vllm_class=f"{_VLLM_MODELS}:ZedaGlm4MoeLiteForCausalLM",
)

FAMILIES: dict[str, Family] = {f.name: f for f in (QWEN3_MOE, GLM4_MOE_LITE)}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r}: choose one of {FAMILY_NAMES}")
    return FAMILIES[name]


def family_of(config: dict[str, Any] | Any) -> Family | None:
    """The family of a config (a config.json dict or a transformers config): static or ZEDA,
    by model_type or, for the authors' checkpoints, by architecture name."""
    if not isinstance(config, dict):
        config = config.to_dict()
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    for family in FAMILIES.values():
        if model_type == family.name or model_type in family.zeda_model_types:
            return family
        if any(a in family.zeda_architectures for a in architectures):
            return family
    return None


def is_zeda_config(config: dict[str, Any]) -> bool:
    """A converted (ZEDA) config.json, by model_type or architecture name."""
    family = family_of(config)
    if family is None:
        return False
    return config.get("model_type") in family.zeda_model_types or any(
        a in family.zeda_architectures for a in config.get("architectures") or []
    )
