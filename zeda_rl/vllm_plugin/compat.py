"""What vLLM needs told about ZEDA architectures that it decides by ``model_type``.

Kept apart from the model code so each adaptation to vLLM internals is in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import ModuleType


def register_mla_model_types(model_types: tuple[str, ...]) -> None:
    """vLLM enables multi-head latent attention (MLA) only for model_types on a fixed list
    (``is_deepseek_mla``); a ZEDA GLM-4.7-Flash keeps the original's MLA, so its model_types
    get a config convertor that answers like ``glm4_moe_lite``'s."""
    from vllm.transformers_utils import model_arch_config_convertor as convertors

    base = convertors.ModelArchConfigConvertorBase

    class ZedaMlaConvertor(base):
        def is_deepseek_mla(self) -> bool:
            return getattr(self.hf_text_config, "kv_lora_rank", None) is not None

    for model_type in model_types:
        convertors.MODEL_ARCH_CONFIG_CONVERTORS.setdefault(model_type, ZedaMlaConvertor)


@contextlib.contextmanager
def moe_block_bound_to(module: ModuleType, name: str, factory: Callable) -> Iterator[None]:
    """Build a vLLM model with its MoE block class replaced by ``factory``.

    vLLM's decoder layers construct their MoE block through a module-level name
    (``Qwen3MoeSparseMoeBlock``, ``Glm4MoeLite``); binding that name to the ZEDA block while
    the model is built avoids allocating (and registering) vLLM's fused experts only to
    throw them away. The original is restored even if construction fails.
    """
    original = getattr(module, name)
    setattr(module, name, factory)
    try:
        yield
    finally:
        setattr(module, name, original)
