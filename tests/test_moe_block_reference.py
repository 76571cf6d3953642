"""The ZEDA MoE block against an independent dense reference of the routing (mask off)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zeda_kernels import group_real_slots, grouped_experts_forward
from zeda_rl.models import ZedaGlm4MoeLiteConfig, ZedaQwen3MoeConfig
from zeda_rl.models.moe_block import ZedaSigmoidMoeBlock, ZedaSoftmaxMoeBlock
from zeda_rl.models.tiny import tiny_glm4_moe_lite_config, tiny_qwen3_moe_config
from zeda_rl.models.zero_experts import RoutingState


def _dense_expert_outputs(block, x):
    """Every real expert on every token: [N, T, H]."""
    outs = []
    for e in range(block.num_real):
        gate, up = (x @ block.experts.gate_up_proj[e].T).chunk(2, dim=-1)
        outs.append((F.silu(gate) * up) @ block.experts.down_proj[e].T)
    return torch.stack(outs)


def dense_reference_softmax(block, x):
    num_real, k = block.num_real, block.top_k
    probs = torch.softmax(x @ block.gate.weight.T, dim=-1)
    chosen = torch.zeros_like(probs, dtype=torch.bool)
    chosen.scatter_(1, probs.topk(k, dim=-1).indices, True)
    gates = torch.where(chosen, probs, torch.zeros_like(probs))
    gates = gates / gates.sum(-1, keepdim=True)  # over the K chosen slots, zero slots included
    real_gates = gates[:, :num_real]  # zero mass dropped
    return torch.einsum("te,eth->th", real_gates, _dense_expert_outputs(block, x))


def dense_reference_sigmoid(block, x, scaling):
    num_real, k = block.num_real, block.top_k
    scores = torch.sigmoid(x @ block.gate.weight.T)
    choice = scores + block.gate.e_score_correction_bias
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    chosen.scatter_(1, choice.topk(k, dim=-1).indices, True)
    gates = torch.where(chosen, scores, torch.zeros_like(scores))
    gates = gates / gates.sum(-1, keepdim=True) * scaling
    routed = torch.einsum("te,eth->th", gates[:, :num_real], _dense_expert_outputs(block, x))
    return routed + block.shared_experts(x)


def _make_block(family, seed, zero_type="zero"):
    torch.manual_seed(seed)
    if family == "qwen3_moe":
        config = ZedaQwen3MoeConfig(**tiny_qwen3_moe_config().to_dict(), zero_expert_type=zero_type)
        block = ZedaSoftmaxMoeBlock(config, 0, RoutingState())
        nn_init = [block.gate.weight]
    else:
        from transformers.models.glm4_moe_lite.modeling_glm4_moe_lite import Glm4MoeLiteMLP

        config = ZedaGlm4MoeLiteConfig(
            **tiny_glm4_moe_lite_config().to_dict(), zero_expert_type=zero_type
        )
        shared = Glm4MoeLiteMLP(config, intermediate_size=config.moe_intermediate_size)
        block = ZedaSigmoidMoeBlock(config, 1, RoutingState(), shared_experts=shared)
        block.gate.e_score_correction_bias.normal_(0, 0.1)
        nn_init = [block.gate.weight]
    with torch.no_grad():
        for p in nn_init:
            p.normal_(0, 0.5)
        block.experts.gate_up_proj.normal_(0, 0.2)
        block.experts.down_proj.normal_(0, 0.2)
    return block.double()


def _reference(block, x):
    if isinstance(block, ZedaSoftmaxMoeBlock):
        return dense_reference_softmax(block, x)
    return dense_reference_sigmoid(block, x, block.config.routed_scaling_factor)


@pytest.mark.parametrize("family", ["qwen3_moe", "glm4_moe_lite"])
@pytest.mark.parametrize("seed", [0, 1])
def test_block_matches_dense_reference_forward_and_grad(family, seed):
    block = _make_block(family, seed)
    x = torch.randn(2, 13, block.config.hidden_size, dtype=torch.float64, requires_grad=True)

    out = block(x)
    record = block.routing_state.records[block.layer_idx]
    assert 0.0 < record.zero_ratio.item() < 1.0  # both kinds of picks happen
    ref = _reference(block, x.reshape(-1, x.shape[-1])).reshape(x.shape)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-9)

    probe = torch.randn_like(out)
    params = [x, block.gate.weight, block.experts.gate_up_proj, block.experts.down_proj]
    got = torch.autograd.grad((out * probe).sum(), params)
    want = torch.autograd.grad((ref * probe).sum(), params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-9)
    # Zero-expert router rows learn through the renormalised gate probabilities.
    assert got[1][block.num_real :].abs().sum() > 0


def test_copy_expert_adds_weighted_input():
    block = _make_block("qwen3_moe", 0, zero_type="copy")
    x = torch.randn(20, block.config.hidden_size, dtype=torch.float64)
    zero_block = _make_block("qwen3_moe", 0, zero_type="zero")
    probs = torch.softmax(x @ block.gate.weight.T, dim=-1)
    top = probs.topk(block.top_k, dim=-1)
    weights = top.values / top.values.sum(-1, keepdim=True)
    copy_mass = (weights * (top.indices >= block.num_real)).sum(-1, keepdim=True)
    torch.testing.assert_close(block(x), zero_block(x) + copy_mass * x)


def test_dispatch_skips_zero_slots_and_all_zero_tokens_get_zero():
    num_real, hidden, inter = 4, 8, 6
    ids = torch.tensor([[0, 5], [4, 6], [3, 3], [7, 1]])  # ids >= 4 are zero experts
    groups = group_real_slots(ids, num_real)
    assert groups.counts == [1, 1, 0, 2]
    assert groups.num_slots == 4  # only real picks are gathered
    assert sorted(groups.token_index.tolist()) == [0, 2, 2, 3]

    x = torch.randn(4, hidden)
    w13, w2 = torch.randn(num_real, 2 * inter, hidden), torch.randn(num_real, hidden, inter)
    out = grouped_experts_forward(x, ids, torch.rand(4, 2), w13, w2, num_real_experts=num_real)
    assert torch.equal(out[1], torch.zeros(hidden))  # token 1 picked only zero experts

    all_zero = grouped_experts_forward(
        x, torch.full((4, 2), 5), torch.rand(4, 2), w13, w2, num_real_experts=num_real
    )
    assert torch.equal(all_zero, torch.zeros_like(x))


def test_only_real_picks_enter_expert_matmuls():
    """Count the rows that reach the activation between the two expert matmuls."""
    torch.manual_seed(0)
    num_real, num_zero, k, tokens = 8, 4, 4, 64
    ids = torch.stack([torch.randperm(num_real + num_zero)[:k] for _ in range(tokens)])
    rows_seen = []

    def counting_silu(t):
        rows_seen.append(t.shape[0])
        return F.silu(t)

    out = grouped_experts_forward(
        torch.randn(tokens, 16),
        ids,
        torch.rand(tokens, k),
        torch.randn(num_real, 12, 16),
        torch.randn(num_real, 16, 6),
        num_real_experts=num_real,
        activation=counting_silu,
    )
    assert out.shape == (tokens, 16)
    assert sum(rows_seen) == int((ids < num_real).sum())
    assert len(rows_seen) == len(torch.unique(ids[ids < num_real]))  # one matmul per used expert


def test_dispatch_rejects_bad_shapes():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="num_real_experts"):
        grouped_experts_forward(
            x,
            torch.zeros(3, 2, dtype=torch.long),
            torch.ones(3, 2),
            torch.randn(4, 12, 8),
            torch.randn(4, 8, 6),
            num_real_experts=5,
        )
    with pytest.raises(ValueError, match="unknown experts backend"):
        grouped_experts_forward(
            x,
            torch.zeros(3, 2, dtype=torch.long),
            torch.ones(3, 2),
            torch.randn(4, 12, 8),
            torch.randn(4, 8, 6),
            num_real_experts=4,
            backend="nope",
        )
