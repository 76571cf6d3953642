"""Checkpoints in the ZEDA authors' released format load into the same models."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import FAMILIES, padded_batch
from zeda_rl.convert import convert
from zeda_rl.models import (
    Glm4MoeLitePlusPlusForCausalLM,
    Qwen3MoePlusPlusForCausalLM,
    load_zeda_model,
)

AUTHORS = {
    "qwen3_moe": (
        "Qwen3MoePlusPlusForCausalLM",
        "qwen3_moe_plus_plus",
        Qwen3MoePlusPlusForCausalLM,
    ),
    "glm4_moe_lite": (
        "Glm4MoeLitePlusPlusForCausalLM",
        "glm4_moe_lite_plus_plus",
        Glm4MoeLitePlusPlusForCausalLM,
    ),
}


def _as_authors_release(folder, family, model_type):
    """Rewrite our config the way the authors' README instructs (zce_* fields)."""
    config = json.loads((folder / "config.json").read_text())
    architecture = AUTHORS[family][0]
    for key in ("num_zero_experts", "zero_expert_type", "mask_zero_experts", "zeda_conversion"):
        config.pop(key)
    config.update(
        architectures=[architecture],
        model_type=model_type,
        zce_nums=[4],
        zce_types=["zero"],
        use_zce_mask=False,
    )
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model_type_kind", ["base", "plus_plus"])
def test_authors_checkpoint_gives_identical_logits(
    tmp_path, static_checkpoints, family, model_type_kind
):
    ours = convert(static_checkpoints[family], tmp_path / "ours", log=lambda *_: None)
    theirs = convert(static_checkpoints[family], tmp_path / "theirs", log=lambda *_: None)
    model_type = family if model_type_kind == "base" else AUTHORS[family][1]
    _as_authors_release(theirs, family, model_type)

    reference = AutoModelForCausalLM.from_pretrained(ours).eval()
    loaded = load_zeda_model(theirs).eval()
    assert isinstance(loaded, AUTHORS[family][2])
    assert loaded.config.num_zero_experts == 4 and loaded.config.mask_zero_experts is False
    if model_type_kind == "plus_plus":  # the Auto classes resolve it by model_type too
        assert isinstance(AutoModelForCausalLM.from_pretrained(theirs), AUTHORS[family][2])
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        a = reference(input_ids=input_ids, attention_mask=attention_mask).logits
        b = loaded(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.equal(a, b)


def test_authors_multi_group_config_is_rejected_by_name(static_checkpoints):
    from zeda_rl.models import ZedaQwen3MoeConfig

    with pytest.raises(ValueError, match="zce_nums"):
        ZedaQwen3MoeConfig(
            num_experts=8, num_experts_per_tok=2, zce_nums=[2, 2], zce_types=["zero", "copy"]
        )


def test_load_zeda_model_rejects_static_checkpoint(static_checkpoints):
    with pytest.raises(ValueError, match="not a ZEDA checkpoint"):
        load_zeda_model(static_checkpoints["qwen3_moe"])
