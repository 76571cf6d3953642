"""ZEDA configs: the base family's config plus the zero-expert fields.

Our field names, with the ZEDA authors' released names accepted as aliases:

===================== ================== =====================================================
ours                  authors' release   meaning
===================== ================== =====================================================
num_zero_experts      zce_nums=[N_Z]     zero experts appended at router ids [N, N + N_Z)
zero_expert_type      zce_types=[type]   "zero" (outputs 0) or "copy" (outputs its input)
mask_zero_experts     use_zce_mask       zero-expert logits to -inf: the original static MoE
routing_top_p         -                  Top-P pruning of the real picks (models/top_p.py);
                                         None: off
routing_top_k         -                  static top-K' pruning of the real picks (K' < K;
                                         models/top_p.py); None: off
zero_expert_bias      -                  the compute dial: added to the zero experts'
                                         selection scores (models/zero_experts.py); 0: as
                                         trained
===================== ================== =====================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from transformers import Glm4MoeLiteConfig, Qwen3MoeConfig

from zeda_rl.families import GLM4_MOE_LITE, QWEN3_MOE, Family
from zeda_rl.models.zero_experts import ZERO_EXPERT_TYPES

# transformers' GLM-4.7-Flash normalises its q and kv LoRA ranks (q_a_layernorm,
# kv_a_layernorm) with eps 1e-6 whatever rms_norm_eps says; other implementations (vLLM,
# megatron-core) take rms_norm_eps and are set to this to compute the same model.
GLM_LORA_NORM_EPS = 1e-6


def _take_author_aliases(config: Any, kwargs: dict[str, Any]) -> None:
    """Map the authors' ``zce_*`` fields onto ours (a single zero-expert group only)."""
    zce_nums = kwargs.pop("zce_nums", None)
    zce_types = kwargs.pop("zce_types", None)
    use_zce_mask = kwargs.pop("use_zce_mask", None)
    if zce_nums is not None:
        if len(zce_nums) != 1:
            raise ValueError(
                f"zce_nums={zce_nums}: only one zero-expert group is supported "
                "(the released ZEDA recipe uses a single 'zero' group)"
            )
        config.num_zero_experts = int(zce_nums[0])
    if zce_types is not None:
        if len(zce_types) != 1:
            raise ValueError(f"zce_types={zce_types}: only one zero-expert group is supported")
        config.zero_expert_type = zce_types[0]
    if use_zce_mask is not None:
        config.mask_zero_experts = bool(use_zce_mask)


def _validate_zero_experts(config: Any) -> None:
    name = type(config).__name__
    num_real = config.num_routed_experts
    if config.num_zero_experts is None:
        config.num_zero_experts = num_real // 2
    if config.num_zero_experts < 0:
        raise ValueError(f"{name}.num_zero_experts must be >= 0, got {config.num_zero_experts}")
    if config.zero_expert_type not in ZERO_EXPERT_TYPES:
        raise ValueError(
            f"{name}.zero_expert_type={config.zero_expert_type!r} is not supported; "
            f"choose one of {ZERO_EXPERT_TYPES}"
        )
    if num_real <= 0:
        raise ValueError(f"{name}: a ZEDA model needs routed experts, got {num_real}")
    top_p = config.routing_top_p
    if top_p is not None and not (isinstance(top_p, int | float) and 0 < top_p <= 1):
        raise ValueError(f"{name}.routing_top_p={top_p!r} must be None or in (0, 1]")
    top_k = config.routing_top_k
    if top_k is not None and not (
        isinstance(top_k, int)
        and not isinstance(top_k, bool)
        and 0 < top_k <= config.num_experts_per_tok
    ):
        raise ValueError(
            f"{name}.routing_top_k={top_k!r} must be None or an int in "
            f"[1, {config.num_experts_per_tok}] (num_experts_per_tok)"
        )
    bias = config.zero_expert_bias
    if not (isinstance(bias, int | float) and not isinstance(bias, bool) and math.isfinite(bias)):
        raise ValueError(f"{name}.zero_expert_bias={bias!r} must be a finite number")
    if not 0 < config.num_experts_per_tok <= num_real:
        raise ValueError(
            f"{name}.num_experts_per_tok={config.num_experts_per_tok} must be in [1, {num_real}] "
            "(top-K over the real experts)"
        )


@dataclass
class ZedaExpertFields:
    """The zero-expert fields every ZEDA config adds to its family's (the table above), and
    what the routers read from them. A dataclass, so transformers keeps them as fields."""

    num_zero_experts: int | None = None  # default N // 2
    zero_expert_type: str = "zero"
    mask_zero_experts: bool = False
    routing_top_p: float | None = None
    routing_top_k: int | None = None
    zero_expert_bias: float = 0.0
    family: ClassVar[Family]

    def __post_init__(self, **kwargs):
        _take_author_aliases(self, kwargs)
        super().__post_init__(**kwargs)
        _validate_zero_experts(self)

    @property
    def num_routed_experts(self) -> int:
        return getattr(self, self.family.expert_count_key)

    @property
    def num_router_experts(self) -> int:
        return self.num_routed_experts + self.num_zero_experts


class ZedaQwen3MoeConfig(ZedaExpertFields, Qwen3MoeConfig):
    """Qwen3-MoE (softmax router) with zero experts."""

    model_type = QWEN3_MOE.zeda_model_type
    family = QWEN3_MOE


class ZedaGlm4MoeLiteConfig(ZedaExpertFields, Glm4MoeLiteConfig):
    """GLM-4.7-Flash (sigmoid router, correction bias, shared expert) with zero experts."""

    model_type = GLM4_MOE_LITE.zeda_model_type
    family = GLM4_MOE_LITE

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.n_group != 1 or self.topk_group != 1:
            raise ValueError(
                f"ZedaGlm4MoeLiteConfig: n_group={self.n_group}, topk_group={self.topk_group}; "
                "zero experts are defined for ungrouped routing (n_group = topk_group = 1, as in "
                "GLM-4.7-Flash)"
            )


class Qwen3MoePlusPlusConfig(ZedaQwen3MoeConfig):
    """The ZEDA authors' released format (architectures ``Qwen3MoePlusPlusForCausalLM``)."""

    model_type = QWEN3_MOE.authors_model_type


class Glm4MoeLitePlusPlusConfig(ZedaGlm4MoeLiteConfig):
    """The ZEDA authors' released format (architectures ``Glm4MoeLitePlusPlusForCausalLM``)."""

    model_type = GLM4_MOE_LITE.authors_model_type
