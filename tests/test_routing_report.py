"""What the model reports per layer, routing replay, and config validation."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import padded_batch
from zeda_rl.models import (
    ZedaGlm4MoeLiteConfig,
    ZedaGlm4MoeLiteForCausalLM,
    ZedaQwen3MoeConfig,
    ZedaQwen3MoeForCausalLM,
    zero_expert_ratio,
)
from zeda_rl.models.tiny import tiny_glm4_moe_lite_config, tiny_qwen3_moe_config


def _model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    if family == "qwen3_moe":
        model = ZedaQwen3MoeForCausalLM(ZedaQwen3MoeConfig(**tiny_qwen3_moe_config().to_dict()))
    else:
        model = ZedaGlm4MoeLiteForCausalLM(
            ZedaGlm4MoeLiteConfig(**tiny_glm4_moe_lite_config().to_dict())
        )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("family", ["qwen3_moe", "glm4_moe_lite"])
def test_per_layer_report_counts_only_real_tokens(family):
    model = _model(family)
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask)
    moe_layers = [
        i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "routing_state")
    ]
    assert [r.layer_idx for r in out.routing] == moe_layers
    k = model.config.num_experts_per_tok
    valid = attention_mask.reshape(-1).bool()
    for r in out.routing:
        assert r.num_tokens == int(valid.sum())
        assert r.topk_ids.shape == (input_ids.numel(), k)
        real = (r.topk_ids[valid] < model.config.num_routed_experts).sum(-1)
        assert torch.equal(r.real_experts_per_token[valid], real)
        assert r.zero_ratio.item() == pytest.approx(1 - real.float().mean().item() / k)
        assert r.f_real.item() + r.f_zero.item() == pytest.approx(1.0)
        assert r.p_real.item() + r.p_zero.item() == pytest.approx(1.0, abs=1e-6)
    overall = zero_expert_ratio(out.routing)
    assert overall == pytest.approx(
        sum(r.zero_ratio.item() for r in out.routing) / len(out.routing)
    )


@pytest.mark.parametrize("family", ["qwen3_moe", "glm4_moe_lite"])
def test_routing_replay_reproduces_routes_and_keeps_router_gradient(family):
    model = _model(family)
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        first = model(input_ids=input_ids, attention_mask=attention_mask)
    replay = {r.layer_idx: r.topk_ids for r in first.routing}
    # Force different routing in the replayed forward: replay must win over the router.
    with torch.no_grad():
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.weight.add_(torch.randn_like(layer.mlp.gate.weight))
    out = model(input_ids=input_ids, attention_mask=attention_mask, routing_replay=replay)
    for a, b in zip(first.routing, out.routing, strict=True):
        assert torch.equal(a.topk_ids, b.topk_ids)
    out.logits.sum().backward()
    gate = next(layer.mlp.gate for layer in model.model.layers if hasattr(layer.mlp, "gate"))
    assert gate.weight.grad is not None and gate.weight.grad.abs().sum() > 0


def test_replay_must_cover_and_be_consumed():
    model = _model("qwen3_moe")
    input_ids, _ = padded_batch()
    with torch.no_grad():
        first = model(input_ids=input_ids)
    partial = {first.routing[0].layer_idx: first.routing[0].topk_ids}
    with pytest.raises(KeyError, match="no expert ids for MoE layer 1"):
        model(input_ids=input_ids, routing_replay=partial)
    extra = {r.layer_idx: r.topk_ids for r in first.routing} | {7: first.routing[0].topk_ids}
    with pytest.raises(RuntimeError, match=r"layers \[7\] was never consumed"):
        model(input_ids=input_ids, routing_replay=extra)
    # The state is clean afterwards: a plain forward works.
    model(input_ids=input_ids)


def test_generation_runs_with_kv_cache():
    model = _model("qwen3_moe")
    input_ids, attention_mask = padded_batch()
    generated = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=0,
    )
    assert generated.shape == (3, 13)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_zero_experts": -1}, "num_zero_experts"),
        ({"zero_expert_type": "constantish"}, "zero_expert_type"),
        ({"num_experts_per_tok": 9}, "num_experts_per_tok"),
    ],
)
def test_invalid_zero_expert_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        ZedaQwen3MoeConfig(**{**tiny_qwen3_moe_config().to_dict(), **overrides})


def test_glm_grouped_routing_rejected():
    with pytest.raises(ValueError, match="n_group"):
        ZedaGlm4MoeLiteConfig(**{**tiny_glm4_moe_lite_config().to_dict(), "n_group": 2})
