"""Evaluation metrics on hand-made routing traces and logits with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from zeda_rl.eval.metrics import (
    RoutingTrace,
    model_flops_per_token,
    model_flops_saved,
    per_layer_zero_ratio,
    per_token_real_experts,
    pooled_zero_ratio,
    teacher_agreement,
    zero_ratio,
)
from zeda_rl.models import ZedaQwen3MoeConfig
from zeda_rl.models.tiny import tiny_qwen3_moe_config


def test_zero_ratios_of_hand_made_traces():
    # K = 4, two layers. Request A: 2 tokens; request B: 1 token.
    a = RoutingTrace(torch.tensor([[4, 2], [0, 2]]), top_k=4, layer_ids=[1, 2])  # 8 real of 16
    b = RoutingTrace(torch.tensor([[1, 3]]), top_k=4, layer_ids=[1, 2])  # 4 real of 8
    assert zero_ratio(a) == 0.5
    assert zero_ratio(b) == 0.5
    c = RoutingTrace(torch.tensor([[4, 4]]), top_k=4, layer_ids=[1, 2])  # no zero picks
    assert zero_ratio(c) == 0.0
    # Pooled over slots: (8 + 4 + 8) real of 32 slots.
    assert pooled_zero_ratio([a, b, c]) == pytest.approx(1 - 20 / 32)
    # Per layer: layer 1 real = 4+0+1+4 = 9 of 16; layer 2 real = 2+2+3+4 = 11 of 16.
    assert per_layer_zero_ratio([a, b, c]) == {1: pytest.approx(7 / 16), 2: pytest.approx(5 / 16)}
    assert per_token_real_experts(a) == [3.0, 1.0]


def test_flops_saved_share():
    config = ZedaQwen3MoeConfig(**tiny_qwen3_moe_config().to_dict())
    parts = model_flops_per_token(config)
    assert parts["routed_experts"] == 2 * 3 * 64 * 32 * 2 * 2  # 2 MoE layers, top-2
    saved = model_flops_saved(config, 0.5)
    assert saved == pytest.approx(0.5 * parts["routed_experts"] / sum(parts.values()))
    assert model_flops_saved(config, 0.0) == 0.0


def test_teacher_agreement_known_values():
    teacher = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
    student = torch.log(torch.tensor([[[0.25, 0.5, 0.25], [0.1, 0.8, 0.1]]]))
    mask = torch.tensor([[True, True]])
    got = teacher_agreement(student, teacher, mask)
    expected_kl_first = 0.25 * math.log(0.5) + 0.5 * math.log(2) + 0.0
    assert got.reverse_kl == pytest.approx(expected_kl_first / 2, abs=1e-6)
    assert got.top1 == 0.5 and got.tokens == 2
    only_second = teacher_agreement(student, teacher, torch.tensor([[False, True]]))
    assert only_second.reverse_kl == pytest.approx(0.0, abs=1e-6) and only_second.top1 == 1.0
    with pytest.raises(ValueError, match="logit shapes differ"):
        teacher_agreement(student[..., :2], teacher, mask)
