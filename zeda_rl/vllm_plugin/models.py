"""ZEDA causal LMs for vLLM: vLLM's own Qwen3-MoE / GLM-4.7-Flash models (attention, MLA,
norms, embeddings, loaders) with every MoE block built as ``ZedaVllmMoe``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
from vllm.model_executor.models import glm4_moe_lite as vllm_glm4_moe_lite
from vllm.model_executor.models import qwen3_moe as vllm_qwen3_moe
from vllm.model_executor.models.interfaces import SupportsPP
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    extract_layer_index,
    maybe_prefix,
)
from vllm.sequence import IntermediateTensors

from zeda_rl.models.configuration import GLM_LORA_NORM_EPS
from zeda_rl.vllm_plugin.compat import moe_block_bound_to
from zeda_rl.vllm_plugin.moe import ZedaVllmMoe

_MOE_WEIGHT = re.compile(r"^(model\.layers\.\d+\.mlp\.)((?:gate|experts)\..+)$")


class ZedaQwen3VllmMoe(ZedaVllmMoe):
    """Built where vLLM's Qwen3 decoder layer builds ``Qwen3MoeSparseMoeBlock``."""

    def __init__(self, vllm_config: VllmConfig, prefix: str = "", **_unused):
        super().__init__(
            vllm_config.model_config.hf_text_config,
            layer_idx=extract_layer_index(prefix),
            sigmoid=False,
        )


class ZedaGlm4MoeLiteVllmMoe(ZedaVllmMoe):
    """Built where vLLM's GLM-4.7-Flash decoder layer builds ``Glm4MoeLite``."""

    def __init__(self, config, quant_config=None, prefix: str = ""):
        shared = None
        if config.n_shared_experts:
            shared = vllm_glm4_moe_lite.Glm4MoeLiteMLP(
                hidden_size=config.hidden_size,
                intermediate_size=config.moe_intermediate_size * config.n_shared_experts,
                hidden_act=config.hidden_act,
                quant_config=quant_config,
                reduce_results=True,
                prefix=f"{prefix}.shared_experts",
            )
        super().__init__(
            config, layer_idx=extract_layer_index(prefix), sigmoid=True, shared_experts=shared
        )


def load_with_zeda_moe(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    load_others: Callable[[Iterable[tuple[str, torch.Tensor]]], Iterable[str]],
) -> set[str]:
    """Route router and routed-expert tensors to their ``ZedaVllmMoe``; everything else
    (attention, norms, shared experts, embeddings) goes through vLLM's own loader."""
    blocks = {f"{name}.": m for name, m in model.named_modules() if isinstance(m, ZedaVllmMoe)}

    def others() -> Iterable[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            match = _MOE_WEIGHT.match(name)
            if match is not None and match.group(1) in blocks:
                blocks[match.group(1)].load_weight(match.group(2), tensor)
                continue
            yield name, tensor

    loaded = set(load_others(others()))
    for prefix, block in blocks.items():
        loaded |= {prefix + name for name in block.loaded_parameters()}
    return loaded


class _ZedaCausalLM(nn.Module, SupportsPP):
    """What both families share once ``self.model`` is built."""

    # Set by the worker extension when rollouts record their routes (vllm_plugin/routes.py).
    route_recorder = None

    def _finish(self, vllm_config: VllmConfig, config, prefix: str) -> None:
        self.lm_head = ParallelLMHead(
            config.vocab_size,
            config.hidden_size,
            quant_config=vllm_config.quant_config,
            prefix=maybe_prefix(prefix, "lm_head"),
        )
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        if self.route_recorder is not None and input_ids is not None:
            self.route_recorder.record_inputs(input_ids, positions)
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_with_zeda_moe(self, weights, AutoWeightsLoader(self).load_weights)


class ZedaQwen3MoeForCausalLM(_ZedaCausalLM):
    hf_to_vllm_mapper = vllm_qwen3_moe.Qwen3MoeModel.hf_to_vllm_mapper
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        self.config = vllm_config.model_config.hf_text_config
        with moe_block_bound_to(vllm_qwen3_moe, "Qwen3MoeSparseMoeBlock", ZedaQwen3VllmMoe):
            self.model = vllm_qwen3_moe.Qwen3MoeModel(
                vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model")
            )
        self._finish(vllm_config, self.config, prefix)


class ZedaGlm4MoeLiteForCausalLM(_ZedaCausalLM):
    packed_modules_mapping = {
        "gate_up_proj": ["gate_proj", "up_proj"],
        "fused_qkv_a_proj": ["q_a_proj", "kv_a_proj_with_mqa"],
    }

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        self.config = vllm_config.model_config.hf_config
        with moe_block_bound_to(vllm_glm4_moe_lite, "Glm4MoeLite", ZedaGlm4MoeLiteVllmMoe):
            self.model = vllm_glm4_moe_lite.Glm4MoeLiteModel(
                vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model")
            )
        # As transformers (configuration.GLM_LORA_NORM_EPS); vLLM uses rms_norm_eps.
        for name, module in self.model.named_modules():
            if name.endswith(("q_a_layernorm", "kv_a_layernorm")):
                module.variance_epsilon = GLM_LORA_NORM_EPS
        self._finish(vllm_config, self.config, prefix)
