"""Training-free Top-P routing (zeda_rl/models/top_p.py), the dynamic-MoE baseline."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FAMILIES
from zeda_rl.convert import convert
from zeda_rl.models import zero_expert_ratio
from zeda_rl.models.registry import load_zeda_model
from zeda_rl.models.top_p import top_p_prune
from zeda_rl.models.zero_experts import RouterDecision


def _decision(ids, weights) -> RouterDecision:
    ids, weights = torch.tensor(ids), torch.tensor(weights)
    return RouterDecision(ids, weights, loss_probs=torch.zeros(1), loss_topk_ids=ids)


def test_keeps_the_largest_picks_up_to_p_and_rescales_them():
    # Slots in arbitrary order: weights 0.2, 0.5, 0.3 on experts 4, 1, 6 (all real, N=8).
    d = _decision([[4, 1, 6]], [[0.2, 0.5, 0.3]])
    cut = top_p_prune(d, num_real=8, top_p=0.6)  # 0.5 < 0.6, then 0.5 + 0.3 reaches it
    assert cut.topk_ids.tolist() == [[8, 1, 6]]
    assert torch.allclose(cut.topk_weights, torch.tensor([[0.0, 0.625, 0.375]]))
    only_first = top_p_prune(d, num_real=8, top_p=0.5)  # the largest alone reaches 0.5
    assert only_first.topk_ids.tolist() == [[8, 1, 8]]
    assert torch.allclose(only_first.topk_weights, torch.tensor([[0.0, 1.0, 0.0]]))
    everything = top_p_prune(d, num_real=8, top_p=1.0)
    assert torch.equal(everything.topk_ids, d.topk_ids)
    assert torch.allclose(everything.topk_weights, d.topk_weights)


def test_zero_picks_are_left_alone_and_the_real_mass_is_kept():
    # GLM-like weights (scaled by 1.8, summing to 1.8 over the slots) with one zero pick.
    d = _decision([[2, 9, 0, 5]], [[0.72, 0.36, 0.54, 0.18]])
    cut = top_p_prune(d, num_real=8, top_p=0.7)  # real mass 1.44: keep 0.72 + 0.54
    assert cut.topk_ids.tolist() == [[2, 9, 0, 8]]
    w = cut.topk_weights[0]
    assert w[1] == pytest.approx(0.36)  # the zero pick's weight (a copy expert uses it)
    assert float(w[0] + w[2]) == pytest.approx(1.44) and float(w[3]) == 0.0
    none_real = _decision([[9, 10]], [[0.4, 0.6]])
    assert torch.equal(top_p_prune(none_real, num_real=8, top_p=0.5).topk_ids, none_real.topk_ids)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01])
def test_p_must_be_a_share(bad):
    with pytest.raises(ValueError, match="routing_top_p"):
        top_p_prune(_decision([[0, 1]], [[0.5, 0.5]]), num_real=8, top_p=bad)


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_model_under_top_p_is_the_baseline(static_checkpoints, tmp_path, family):
    """mask_zero_experts + routing_top_p: p = 1 is the teacher exactly; a smaller p skips
    picks (counted as zero-expert picks), every token keeping at least one expert."""
    from transformers import AutoModelForCausalLM

    convert(static_checkpoints[family], tmp_path / "zeda", log=lambda *_: None)
    teacher = AutoModelForCausalLM.from_pretrained(static_checkpoints[family]).eval()
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = teacher(input_ids=ids).logits
        ratios = {}
        for p in (1.0, 0.9, 0.5):
            model = load_zeda_model(tmp_path / "zeda", mask_zero_experts=True, routing_top_p=p)
            out = model.eval()(input_ids=ids)
            ratios[p] = zero_expert_ratio(out.routing)
            assert all(int(r.real_experts_per_token.min()) >= 1 for r in out.routing)
            if p == 1.0:
                assert torch.allclose(out.logits, reference, atol=1e-5, rtol=0)
    assert ratios[1.0] == 0.0 <= ratios[0.9] <= ratios[0.5] and ratios[0.5] > 0.0


def test_eval_cli_refuses_top_p_on_a_static_checkpoint(static_checkpoints, capsys):
    from zeda_rl.eval.__main__ import main

    assert main(["--model", str(static_checkpoints["qwen3_moe"]), "--routing-top-p", "0.5"]) == 2
    assert "need a ZEDA checkpoint" in capsys.readouterr().err
    assert main(["--model", str(static_checkpoints["qwen3_moe"]), "--routing-top-p", "2"]) == 2
    assert "must be in (0, 1]" in capsys.readouterr().err
