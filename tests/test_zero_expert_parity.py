"""Masked zero experts give back the original model exactly; unmasked ones change it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import FAMILIES, build_static_model, padded_batch
from zeda_rl.convert import convert
from zeda_rl.models import ZedaGlm4MoeLiteForCausalLM, ZedaQwen3MoeForCausalLM, zero_expert_ratio

ZEDA_CLASS = {"qwen3_moe": ZedaQwen3MoeForCausalLM, "glm4_moe_lite": ZedaGlm4MoeLiteForCausalLM}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_logits_equal_original(tmp_path, family, seed):
    teacher = build_static_model(family, seed)
    teacher.save_pretrained(tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "dst", seed=seed, log=lambda *_: None)
    input_ids, attention_mask = padded_batch(seed=seed)

    masked = AutoModelForCausalLM.from_pretrained(tmp_path / "dst", mask_zero_experts=True).eval()
    assert isinstance(masked, ZEDA_CLASS[family])
    with torch.no_grad():
        expected = teacher(input_ids=input_ids, attention_mask=attention_mask).logits
        out = masked(input_ids=input_ids, attention_mask=attention_mask)
    assert (out.logits - expected).abs().max().item() <= 1e-5
    assert zero_expert_ratio(out.routing) == 0.0

    unmasked = AutoModelForCausalLM.from_pretrained(tmp_path / "dst").eval()
    with torch.no_grad():
        free = unmasked(input_ids=input_ids, attention_mask=attention_mask)
    assert zero_expert_ratio(free.routing) > 0.0
    assert (free.logits - expected).abs().max().item() > 1e-3
