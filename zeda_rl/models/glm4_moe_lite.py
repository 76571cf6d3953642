"""GLM-4.7-Flash (glm4_moe_lite) with zero experts (64 real + 32 zero, top-4, shared expert)."""

from __future__ import annotations

from torch import nn
from transformers import GenerationMixin
from transformers.models.glm4_moe_lite.modeling_glm4_moe_lite import (
    Glm4MoeLiteAttention,
    Glm4MoeLiteDecoderLayer,
    Glm4MoeLiteForCausalLM,
    Glm4MoeLiteModel,
    Glm4MoeLiteMoE,
    Glm4MoeLitePreTrainedModel,
)

from zeda_rl.models.configuration import Glm4MoeLitePlusPlusConfig, ZedaGlm4MoeLiteConfig
from zeda_rl.models.modeling_common import ZedaCausalLMMixin, init_zeda_weights
from zeda_rl.models.moe_block import ZedaSigmoidMoeBlock
from zeda_rl.models.zero_experts import RoutingState


class ZedaGlm4MoeLitePreTrainedModel(Glm4MoeLitePreTrainedModel):
    config_class = ZedaGlm4MoeLiteConfig
    config: ZedaGlm4MoeLiteConfig
    _can_record_outputs = {
        "hidden_states": Glm4MoeLiteDecoderLayer,
        "attentions": Glm4MoeLiteAttention,
    }

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        init_zeda_weights(module, self.config.initializer_range)


class ZedaGlm4MoeLiteModel(ZedaGlm4MoeLitePreTrainedModel, Glm4MoeLiteModel):
    def __init__(self, config: ZedaGlm4MoeLiteConfig):
        Glm4MoeLiteModel.__init__(self, config)
        self.routing_state = RoutingState()
        for idx, layer in enumerate(self.layers):
            if isinstance(layer.mlp, Glm4MoeLiteMoE):
                layer.mlp = ZedaSigmoidMoeBlock(
                    config, idx, self.routing_state, shared_experts=layer.mlp.shared_experts
                )
        self.post_init()


class ZedaGlm4MoeLiteForCausalLM(
    ZedaCausalLMMixin, ZedaGlm4MoeLitePreTrainedModel, Glm4MoeLiteForCausalLM, GenerationMixin
):
    def __init__(self, config: ZedaGlm4MoeLiteConfig):
        # Glm4MoeLiteForCausalLM.__init__ would build the static model first; build ours directly.
        Glm4MoeLitePreTrainedModel.__init__(self, config)
        self.model = ZedaGlm4MoeLiteModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


class Glm4MoeLitePlusPlusForCausalLM(ZedaGlm4MoeLiteForCausalLM):
    """Loads the ZEDA authors' released checkpoints (same weights, their config names)."""

    config_class = Glm4MoeLitePlusPlusConfig
    config: Glm4MoeLitePlusPlusConfig
