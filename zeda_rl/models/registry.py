"""Registration of the ZEDA architectures with transformers' Auto classes.

After ``import zeda_rl``, ``AutoModelForCausalLM.from_pretrained(converted_dir)`` returns
the ZEDA model for our configs (``zeda_qwen3_moe``, ``zeda_glm4_moe_lite``) and for the
authors' released ones (``qwen3_moe_plus_plus``, ``glm4_moe_lite_plus_plus``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)

from zeda_rl.families import GLM4_MOE_LITE, QWEN3_MOE
from zeda_rl.models import configuration as configs
from zeda_rl.models import glm4_moe_lite as glm
from zeda_rl.models import qwen3_moe as qwen3

# (config class, causal LM class, base model class, family model_type whose weight layout we share)
_ARCHITECTURES = [
    (
        configs.ZedaQwen3MoeConfig,
        qwen3.ZedaQwen3MoeForCausalLM,
        qwen3.ZedaQwen3MoeModel,
        QWEN3_MOE.name,
    ),
    (configs.Qwen3MoePlusPlusConfig, qwen3.Qwen3MoePlusPlusForCausalLM, None, QWEN3_MOE.name),
    (
        configs.ZedaGlm4MoeLiteConfig,
        glm.ZedaGlm4MoeLiteForCausalLM,
        glm.ZedaGlm4MoeLiteModel,
        GLM4_MOE_LITE.name,
    ),
    (
        configs.Glm4MoeLitePlusPlusConfig,
        glm.Glm4MoeLitePlusPlusForCausalLM,
        None,
        GLM4_MOE_LITE.name,
    ),
]

# Architecture name -> config class (the authors' configs may keep the base model_type).
ZEDA_ARCHITECTURE_NAMES = {lm.__name__: cfg for cfg, lm, *_ in _ARCHITECTURES}

_registered = False


def register() -> None:
    """Idempotent: register configs, models and the per-expert checkpoint layout mapping."""
    global _registered
    if _registered:
        return
    for config_cls, lm_cls, base_cls, family in _ARCHITECTURES:
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, lm_cls, exist_ok=True)
        if base_cls is not None:
            AutoModel.register(config_cls, base_cls, exist_ok=True)
        # Same expert layout as the family: hub checkpoints store experts one by one. Keyed
        # by class name too: the authors' configs may keep the base model_type, and
        # transformers skips non-library classes whose keys were not registered.
        for key in (config_cls.model_type, lm_cls.__name__):
            register_checkpoint_conversion_mapping(
                key, get_checkpoint_conversion_mapping(family), overwrite=True
            )
    _registered = True


def read_config_dict(model_dir: str | os.PathLike) -> dict[str, Any]:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_dir}: no config.json")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err


def zeda_config_class(config: dict[str, Any]):
    """The ZEDA config class for a checkpoint's config.json, or None if it is not ZEDA.

    The authors' instructions only change ``architectures`` and leave ``model_type`` at the
    base value, so the architecture name is checked as well as the model_type.
    """
    for config_cls, *_ in _ARCHITECTURES:
        if config.get("model_type") == config_cls.model_type:
            return config_cls
    for arch in config.get("architectures") or []:
        if arch in ZEDA_ARCHITECTURE_NAMES:
            return ZEDA_ARCHITECTURE_NAMES[arch]
    return None


def load_zeda_model(model_dir: str | os.PathLike, **kwargs):
    """``AutoModelForCausalLM.from_pretrained`` that also accepts the authors' checkpoints
    whose config still says ``model_type: qwen3_moe`` / ``glm4_moe_lite``."""
    register()
    config_cls = zeda_config_class(read_config_dict(model_dir))
    if config_cls is None:
        raise ValueError(
            f"{model_dir} is not a ZEDA checkpoint (convert it first: python -m zeda_rl.convert)"
        )
    # Config fields among kwargs (mask_zero_experts=True, ...) go to the config, as they do
    # through AutoModelForCausalLM; the rest to the model.
    config, kwargs = config_cls.from_pretrained(model_dir, return_unused_kwargs=True, **kwargs)
    lm_cls = next(lm for cfg, lm, *_ in _ARCHITECTURES if cfg is config_cls)
    return lm_cls.from_pretrained(model_dir, config=config, **kwargs)
