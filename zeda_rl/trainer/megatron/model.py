"""The ZEDA student as a megatron-core GPTModel, built from the transformers ZEDA config.

Qwen3-MoE: GQA with q/k RMSNorm, every layer MoE (softmax router). GLM-4.7-Flash: multi-head
latent attention (q and kv LoRA with their norms, decoupled RoPE), the first
``first_k_dense_replace`` layers dense, a shared expert, sigmoid routing with a frozen
correction bias and routed scaling. Both use megatron-core's local (non transformer-engine)
modules, SequentialMLP experts and the allgather token dispatcher, with the ZEDA router
(router.py) in every MoE layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zeda_rl.families import GLM4_MOE_LITE, family_of
from zeda_rl.models.configuration import GLM_LORA_NORM_EPS
from zeda_rl.models.zero_experts import RoutingState


def is_glm(hf_config) -> bool:
    """GLM-4.7-Flash's layout: MLA, a shared expert, sigmoid routing with a correction bias."""
    family = family_of(hf_config)
    if family is None:
        raise ValueError(f"model_type {hf_config.model_type!r} is no ZEDA family")
    return family.name == GLM4_MOE_LITE.name


def moe_layer_pattern(hf_config) -> list[int]:
    """1 for a MoE layer, 0 for a dense one, per decoder layer."""
    types = getattr(hf_config, "mlp_layer_types", None)
    if types is not None:
        return [0 if t == "dense" else 1 for t in types]
    key = family_of(hf_config).first_dense_key
    dense = (getattr(hf_config, key, 0) or 0) if key else 0
    return [0 if i < dense else 1 for i in range(hf_config.num_hidden_layers)]


def rope_theta(hf_config) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))


def megatron_config(hf_config, *, expert_parallel: int = 1, params_dtype=torch.float32):
    """megatron-core TransformerConfig (MLATransformerConfig for GLM) of a ZEDA config."""
    from megatron.core.transformer.transformer_config import (
        MLATransformerConfig,
        TransformerConfig,
    )

    if hf_config.hidden_act != "silu":
        raise ValueError(f"hidden_act={hf_config.hidden_act!r}: the megatron backend has silu")
    if hf_config.zero_expert_type != "zero":
        raise ValueError(
            f"zero_expert_type={hf_config.zero_expert_type!r}: the megatron backend implements "
            "'zero' experts only (copy experts need the identity term in the MoE layer)"
        )
    glm = is_glm(hf_config)
    common = dict(
        num_layers=hf_config.num_hidden_layers,
        hidden_size=hf_config.hidden_size,
        num_attention_heads=hf_config.num_attention_heads,
        ffn_hidden_size=hf_config.intermediate_size,
        normalization="RMSNorm",
        layernorm_epsilon=hf_config.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=getattr(hf_config, "attention_bias", False),
        qk_layernorm=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        params_dtype=params_dtype,
        use_cpu_initialization=True,
        perform_initialization=False,  # weights come from the checkpoint
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        num_moe_experts=hf_config.num_routed_experts,
        moe_router_topk=hf_config.num_experts_per_tok,
        moe_ffn_hidden_size=hf_config.moe_intermediate_size,
        moe_layer_freq=moe_layer_pattern(hf_config),
        moe_grouped_gemm=False,
        moe_token_dispatcher_type="allgather",
        # Balancing is the Group Auxiliary Loss, computed from the ZEDA router's records.
        moe_router_load_balancing_type="none",
        moe_aux_loss_coeff=0.0,
        moe_router_dtype="fp32",
        expert_model_parallel_size=expert_parallel,
    )
    if not glm:
        return TransformerConfig(
            **common,
            num_query_groups=hf_config.num_key_value_heads,
            kv_channels=hf_config.head_dim,
            moe_router_score_function="softmax",
        )
    return MLATransformerConfig(
        **common,
        q_lora_rank=hf_config.q_lora_rank,
        kv_lora_rank=hf_config.kv_lora_rank,
        qk_head_dim=hf_config.qk_nope_head_dim,
        qk_pos_emb_head_dim=hf_config.qk_rope_head_dim,
        v_head_dim=hf_config.v_head_dim,
        rope_type="rope",
        rotary_base=rope_theta(hf_config),
        moe_shared_expert_intermediate_size=hf_config.moe_intermediate_size
        * hf_config.n_shared_experts,
        moe_router_score_function="sigmoid",
        moe_router_topk_scaling_factor=hf_config.routed_scaling_factor,
    )


def _local_mla_core_attention():
    """megatron-core's MLA passes ``k_channels`` / ``v_channels`` to its core attention,
    which only transformer-engine's accepts; the local DotProductAttention takes neither
    and sizes its output for ``kv_channels``. This one takes them and sizes the output for
    the value head dimension."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    class LocalMLACoreAttention(DotProductAttention):
        def __init__(self, *args, k_channels=None, v_channels=None, **kwargs):
            super().__init__(*args, **kwargs)
            if v_channels is not None:
                heads = self.num_attention_heads_per_partition
                self.hidden_size_per_partition = v_channels * heads

    return LocalMLACoreAttention


def build_gpt_model(hf_config, routing_state: RoutingState, *, expert_parallel: int = 1):
    """An (uninitialised) megatron GPTModel of the ZEDA config; parallel state must exist."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
    from megatron.core.models.gpt.gpt_model import GPTModel

    from zeda_rl.trainer.megatron.router import router_class

    config = megatron_config(hf_config, expert_parallel=expert_parallel)
    spec = get_gpt_decoder_block_spec(config, use_transformer_engine=False, normalization="RMSNorm")
    router = router_class(hf_config, routing_state)
    for layer_spec in spec.layer_specs:
        mlp = layer_spec.submodules.mlp
        if hasattr(mlp.submodules, "router"):
            mlp.submodules.router = router
        if is_glm(hf_config):
            attention = layer_spec.submodules.self_attention.submodules
            attention.core_attention = _local_mla_core_attention()
    model = GPTModel(
        config,
        spec,
        vocab_size=hf_config.vocab_size,
        max_sequence_length=hf_config.max_position_embeddings,
        position_embedding_type="rope",
        rotary_base=int(rope_theta(hf_config)) if not is_glm(hf_config) else 10000,
        share_embeddings_and_output_weights=hf_config.tie_word_embeddings,
    )
    if is_glm(hf_config):
        # As transformers (configuration.GLM_LORA_NORM_EPS); megatron would use
        # layernorm_epsilon: measured 1.6e-4 relative error per layer.
        for layer in model.decoder.layers:
            for norm in (layer.self_attention.q_layernorm, layer.self_attention.kv_layernorm):
                norm.eps = GLM_LORA_NORM_EPS
    return model
