"""vLLM plugin: serve ZEDA checkpoints with vLLM.

Registered through the ``vllm.general_plugins`` entry point (pyproject.toml), so any vLLM
process that has zeda_rl installed (the engine core, its workers, Ray actors) can load a
converted checkpoint by its architecture name. Model classes are registered lazily by
``"module:Class"`` strings: importing this package stays cheap and vLLM-free.
"""

from __future__ import annotations

from zeda_rl.families import FAMILIES

# architecture name in config.json -> vLLM model class
ARCHITECTURES: dict[str, str] = {
    arch: family.vllm_class for family in FAMILIES.values() for arch in family.zeda_architectures
}

# ZEDA config model_types served with multi-head latent attention (GLM-4.7-Flash's MLA).
MLA_MODEL_TYPES = tuple(t for f in FAMILIES.values() if f.mla for t in f.zeda_model_types)


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
