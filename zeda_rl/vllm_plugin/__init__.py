"""vLLM plugin: serve ZEDA checkpoints with vLLM.

Registered through the ``vllm.general_plugins`` entry point (pyproject.toml), so any vLLM
process that has zeda_rl installed (the engine core, its workers, Ray actors) can load a
converted checkpoint by its architecture name. Model classes are registered lazily by
``"module:Class"`` strings: importing this package stays cheap and vLLM-free.
"""

from __future__ import annotations

_MODELS = "zeda_rl.vllm_plugin.models"

# architecture name in config.json -> vLLM model class
ARCHITECTURES: dict[str, str] = {
    "ZedaQwen3MoeForCausalLM": f"{_MODELS}:ZedaQwen3MoeForCausalLM",
    "Qwen3MoePlusPlusForCausalLM": f"{_MODELS}:ZedaQwen3MoeForCausalLM",
    "ZedaGlm4MoeLiteForCausalLM": f"{_MODELS}:ZedaGlm4MoeLiteForCausalLM",
    "Glm4MoeLitePlusPlusForCausalLM": f"{_MODELS}:ZedaGlm4MoeLiteForCausalLM",
}

# ZEDA config model_types served with multi-head latent attention (GLM-4.7-Flash's MLA).
MLA_MODEL_TYPES = ("zeda_glm4_moe_lite", "glm4_moe_lite_plus_plus")


def register() -> None:
    """Idempotent (vLLM may call it several times per process)."""
    from vllm import ModelRegistry

    from zeda_rl.cpu_shims import native_rope_for_mla_on_cpu
    from zeda_rl.models.registry import register as register_hf
    from zeda_rl.vllm_plugin.compat import register_mla_model_types
    from zeda_rl.vllm_plugin.weight_transfer import register_engines

    # vLLM reads config.json through transformers' AutoConfig: our config classes first.
    register_hf()
    supported = set(ModelRegistry.get_supported_archs())
    for arch, target in ARCHITECTURES.items():
        if arch not in supported:
            ModelRegistry.register_model(arch, target)
    register_mla_model_types(MLA_MODEL_TYPES)
    native_rope_for_mla_on_cpu()
    register_engines()  # the zeda_gloo weight transfer backend
