"""Group Auxiliary Loss: its minimum sits at the target ratio, gradients reach the router."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import build_static_model, padded_batch
from zeda_rl.losses import GroupAuxLossConfig, group_aux_loss, target_zero_ratio
from zeda_rl.losses.group_aux_loss import group_aux_loss_terms
from zeda_rl.models import (
    ZedaGlm4MoeLiteConfig,
    ZedaGlm4MoeLiteForCausalLM,
    ZedaQwen3MoeConfig,
    ZedaQwen3MoeForCausalLM,
)
from zeda_rl.models.moe_block import ZedaSoftmaxMoeBlock
from zeda_rl.models.tiny import tiny_qwen3_moe_config
from zeda_rl.models.zero_experts import RoutingState


@pytest.mark.parametrize(
    ("num_real", "num_zero", "w"), [(128, 64, 2.0), (64, 32, 2.0), (8, 4, 1.0), (8, 4, 4.0)]
)
@pytest.mark.parametrize("scaling", ["code", "paper"])
def test_minimum_over_zero_share_is_the_target(num_real, num_zero, w, scaling):
    share = torch.linspace(0.0, 1.0, 10001, dtype=torch.float64)
    config = GroupAuxLossConfig(alpha=0.1, zero_expert_weight=w, scaling=scaling)
    loss = group_aux_loss_terms(
        1 - share,
        1 - share,
        share,
        share,
        num_real=num_real,
        num_zero=num_zero,
        top_k=8,
        config=config,
    )
    target = target_zero_ratio(num_real, num_zero, w)
    assert abs(share[loss.argmin()].item() - target) <= 1e-4
    if (num_real, num_zero, w) == (128, 64, 2.0):
        assert target == 0.5  # the paper's setting


def test_code_scaling_is_k_times_paper_scaling():
    args = [torch.tensor(v) for v in (0.6, 0.55, 0.4, 0.45)]
    common = dict(num_real=64, num_zero=32, top_k=4)
    code = group_aux_loss_terms(*args, **common, config=GroupAuxLossConfig(scaling="code"))
    paper = group_aux_loss_terms(*args, **common, config=GroupAuxLossConfig(scaling="paper"))
    torch.testing.assert_close(code, 4 * paper)


def test_loss_gradient_reaches_every_router_row():
    config = ZedaQwen3MoeConfig(**tiny_qwen3_moe_config().to_dict())
    torch.manual_seed(0)
    model = ZedaQwen3MoeForCausalLM(config)
    input_ids, attention_mask = padded_batch()
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    loss = group_aux_loss(
        out.routing, num_real=config.num_experts, num_zero=config.num_zero_experts, top_k=2
    )
    loss.backward()
    for layer in model.model.layers:
        grad = layer.mlp.gate.weight.grad
        assert grad is not None and grad.abs().sum(dim=1).gt(0).all()
    # The last layer's experts feed no router, so the auxiliary loss leaves them alone.
    assert model.model.layers[-1].mlp.experts.down_proj.grad is None


def test_training_on_the_loss_alone_reaches_the_target_share():
    """A router trained only with GAL ends near r* = 0.5 from a start far below it."""
    torch.manual_seed(0)
    config = ZedaQwen3MoeConfig(
        **tiny_qwen3_moe_config(num_experts=16, num_experts_per_tok=4).to_dict()
    )
    block = ZedaSoftmaxMoeBlock(config, 0, RoutingState())
    with torch.no_grad():
        block.gate.weight.normal_(0, 0.3)
        block.gate.weight[:, 0] = 0.0
        block.gate.weight[config.num_experts :, 0] = -2.0  # zero experts start unpopular
        block.experts.gate_up_proj.normal_(0, 0.02)
        block.experts.down_proj.normal_(0, 0.02)
    optim = torch.optim.Adam([block.gate.weight], lr=0.02)
    x = torch.randn(512, config.hidden_size)
    x[:, 0] = 1.0  # a constant feature acts as a per-expert bias
    gal = GroupAuxLossConfig(alpha=0.1, zero_expert_weight=2.0)
    shares = []
    for _ in range(300):
        block(x)
        record = block.routing_state.records[0]
        shares.append(record.zero_ratio.item())
        loss = group_aux_loss([record], num_real=16, num_zero=8, top_k=4, config=gal)
        optim.zero_grad()
        loss.backward()
        optim.step()
    print(f"zero share: start {shares[0]:.3f}, end {sum(shares[-50:]) / 50:.3f}")
    assert shares[0] < 0.2
    assert abs(sum(shares[-50:]) / 50 - 0.5) < 0.06


def test_invalid_settings_are_named():
    with pytest.raises(ValueError, match="zero_expert_weight"):
        GroupAuxLossConfig(zero_expert_weight=0)
    with pytest.raises(ValueError, match="scaling"):
        GroupAuxLossConfig(scaling="other")
    with pytest.raises(ValueError, match="alpha"):
        GroupAuxLossConfig(alpha=-1)


def test_glm_loss_uses_unbiased_normalised_scores():
    model = build_static_model("glm4_moe_lite", 0)
    input_ids, attention_mask = padded_batch()
    config = ZedaGlm4MoeLiteConfig(**model.config.to_dict())
    zeda = ZedaGlm4MoeLiteForCausalLM(config).eval()
    out = zeda(input_ids=input_ids, attention_mask=attention_mask)
    for record in out.routing:
        torch.testing.assert_close(record.p_real + record.p_zero, torch.tensor(1.0))
        torch.testing.assert_close(record.f_real + record.f_zero, torch.tensor(1.0))
