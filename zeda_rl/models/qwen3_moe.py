"""Qwen3-MoE with zero experts (Qwen3-30B-A3B: 128 real + 64 zero, top-8)."""

from __future__ import annotations

from torch import nn
from transformers import GenerationMixin
from transformers.models.qwen3_moe.modeling_qwen3_moe import (
    Qwen3MoeAttention,
    Qwen3MoeDecoderLayer,
    Qwen3MoeForCausalLM,
    Qwen3MoeModel,
    Qwen3MoePreTrainedModel,
    Qwen3MoeSparseMoeBlock,
)

from zeda_rl.models.configuration import Qwen3MoePlusPlusConfig, ZedaQwen3MoeConfig
from zeda_rl.models.modeling_common import ZedaCausalLMMixin, init_zeda_weights
from zeda_rl.models.moe_block import ZedaSoftmaxMoeBlock
from zeda_rl.models.zero_experts import RoutingState


class ZedaQwen3MoePreTrainedModel(Qwen3MoePreTrainedModel):
    config_class = ZedaQwen3MoeConfig
    config: ZedaQwen3MoeConfig
    # Routing is reported through ZedaCausalLMOutput.routing, not transformers' router_logits.
    _can_record_outputs = {"hidden_states": Qwen3MoeDecoderLayer, "attentions": Qwen3MoeAttention}

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        init_zeda_weights(module, self.config.initializer_range)


class ZedaQwen3MoeModel(ZedaQwen3MoePreTrainedModel, Qwen3MoeModel):
    def __init__(self, config: ZedaQwen3MoeConfig):
        Qwen3MoeModel.__init__(self, config)
        self.routing_state = RoutingState()
        for idx, layer in enumerate(self.layers):
            if isinstance(layer.mlp, Qwen3MoeSparseMoeBlock):
                layer.mlp = ZedaSoftmaxMoeBlock(config, idx, self.routing_state)
        self.post_init()


class ZedaQwen3MoeForCausalLM(
    ZedaCausalLMMixin, ZedaQwen3MoePreTrainedModel, Qwen3MoeForCausalLM, GenerationMixin
):
    def __init__(self, config: ZedaQwen3MoeConfig):
        # Qwen3MoeForCausalLM.__init__ would build the static model first; build ours directly.
        Qwen3MoePreTrainedModel.__init__(self, config)
        self.model = ZedaQwen3MoeModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.router_aux_loss_coef = config.router_aux_loss_coef
        self.num_experts = config.num_experts
        self.num_experts_per_tok = config.num_experts_per_tok
        self.post_init()


class Qwen3MoePlusPlusForCausalLM(ZedaQwen3MoeForCausalLM):
    """Loads the ZEDA authors' released checkpoints (same weights, their config names)."""

    config_class = Qwen3MoePlusPlusConfig
    config: Qwen3MoePlusPlusConfig
