"""The compute dial (``zero_expert_bias``), static top-K' and the calibration CLI."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import FAMILIES, tokenized_zeda_pair
from zeda_rl.calibrate import find_bias
from zeda_rl.calibrate import main as calibrate_main
from zeda_rl.convert import convert
from zeda_rl.losses.group_aux_loss import group_aux_loss
from zeda_rl.models import zero_expert_ratio
from zeda_rl.models.registry import load_zeda_model
from zeda_rl.models.top_p import static_top_k_prune
from zeda_rl.models.zero_experts import RouterDecision, sigmoid_route, softmax_route

N, NZ, K = 8, 4, 3


def _zero_picks(decision: RouterDecision) -> int:
    return int((decision.topk_ids >= N).sum())


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_bias_moves_selection_only_and_monotonically(router):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, N + NZ, generator=g)
    bias = torch.randn(N + NZ, generator=g) * 0.1

    def route(b: float) -> RouterDecision:
        if router == "softmax":
            return softmax_route(
                logits,
                num_real=N,
                top_k=K,
                norm_topk_prob=True,
                mask_zero_experts=False,
                zero_bias=b,
            )
        return sigmoid_route(
            logits,
            bias,
            num_real=N,
            top_k=K,
            norm_topk_prob=True,
            routed_scaling_factor=1.8,
            mask_zero_experts=False,
            zero_bias=b,
        )

    plain = route(0.0)
    picks = [_zero_picks(route(b)) for b in (-20.0, -1.0, -0.25, 0.0, 0.25, 1.0, 20.0)]
    assert picks == sorted(picks) and picks[0] == 0 and picks[-1] == 64 * K
    assert picks[2] < picks[3] < picks[4]  # it really moves near 0
    # The chosen slots are weighted without the bias: the unbiased scores of those slots,
    # renormalised over the K of them (GLM: times the routed scaling).
    biased = route(0.5)
    if router == "softmax":
        scores = torch.softmax(logits, -1)
        scale = 1.0
    else:
        scores = torch.sigmoid(logits)
        scale = 1.8
    chosen = scores.gather(1, biased.topk_ids)
    expected = chosen / chosen.sum(-1, keepdim=True) * scale
    assert torch.allclose(biased.topk_weights, expected, atol=1e-6)
    # The loss statistics are the unbiased ones.
    assert torch.equal(biased.loss_probs, plain.loss_probs)


def test_masked_zero_experts_ignore_the_bias():
    logits = torch.randn(16, N + NZ, generator=torch.Generator().manual_seed(1))
    d = softmax_route(
        logits, num_real=N, top_k=K, norm_topk_prob=True, mask_zero_experts=True, zero_bias=100.0
    )
    assert _zero_picks(d) == 0


def test_static_top_k_keeps_the_largest_picks():
    ids = torch.tensor([[4, 1, 9, 6]])
    weights = torch.tensor([[0.2, 0.4, 0.1, 0.3]])
    d = RouterDecision(ids, weights, loss_probs=torch.zeros(1), loss_topk_ids=ids)
    cut = static_top_k_prune(d, num_real=8, top_k=2)
    assert cut.topk_ids.tolist() == [[8, 1, 9, 6]]  # 0.4 and 0.3 kept, the zero pick stays
    assert torch.allclose(cut.topk_weights, torch.tensor([[0.0, 0.5142857, 0.1, 0.3857143]]))


@pytest.fixture(scope="module")
def students(static_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("dial")
    out = {}
    for family in FAMILIES:
        convert(static_checkpoints[family], root / family, log=lambda *_: None)
        out[family] = root / family
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_bias_zero_is_bit_exact_and_static_top_k_skips_exactly(students, family):
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = load_zeda_model(students[family]).eval()(input_ids=ids)
        zero = load_zeda_model(students[family], zero_expert_bias=0.0).eval()(input_ids=ids)
        assert torch.equal(plain.logits, zero.logits)
        static = load_zeda_model(students[family], mask_zero_experts=True, routing_top_k=1).eval()
        out = static(input_ids=ids)
    k = static.config.num_experts_per_tok
    assert zero_expert_ratio(out.routing) == pytest.approx(1 - 1 / k)
    assert all(int(r.real_experts_per_token.min()) == 1 for r in out.routing)


@pytest.mark.parametrize("family", FAMILIES)
def test_bias_raises_the_zero_share_of_a_trained_student(students, family):
    """A student whose routers the GAL has trained (zero share moved towards its target):
    a larger dial never lowers its zero share, on the same tokens."""
    model = load_zeda_model(students[family], dtype=torch.float32)
    config = model.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (4, 16), generator=g)
    routers = [p for n, p in model.named_parameters() if n.endswith("gate.weight")]
    optim = torch.optim.Adam(routers, lr=3e-2)
    for _ in range(20):
        loss = group_aux_loss(
            model(input_ids=ids).routing,
            num_real=config.num_routed_experts,
            num_zero=config.num_zero_experts,
            top_k=config.num_experts_per_tok,
        )
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.eval()
    shares = []
    with torch.no_grad():
        for b in (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0):
            config.zero_expert_bias = b
            shares.append(zero_expert_ratio(model(input_ids=ids).routing))
    assert shares == sorted(shares), shares
    assert shares[0] < shares[3] < shares[-1]


def test_find_bias_bisects_a_rising_share():
    def share(b: float) -> float:  # a smooth monotone curve, as a student's
        return float(torch.sigmoid(torch.tensor(1.3 * b - 0.4)))

    for target in (0.1, 0.4, 0.5, 0.9):
        bias, got, trials = find_bias(share, target, tolerance=0.002)
        assert abs(got - target) <= 0.002 and share(bias) == got
        assert len(trials) <= 24
    with pytest.raises(RuntimeError, match="out of the dial's reach"):
        find_bias(lambda b: 0.3, 0.6)


@pytest.fixture(scope="module")
def tokenized_student(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    tokenized_zeda_pair(root)
    return root / "student"


def test_calibrate_hits_its_target_and_writes_a_copy(tokenized_student, capsys):
    out = tokenized_student.parent / "calibrated"
    args = ["--model", str(tokenized_student), "--families", "addition", "--prompts", "24"]
    argv = [*args, "--target-zero-share", "0.4", "--max-new-tokens", "12", "--out", str(out)]
    assert calibrate_main(argv) == 0
    record = json.loads((out / "calibration.json").read_text())
    assert abs(record["calibration_share"] - 0.4) <= 0.005
    assert abs(record["heldout_share"] - 0.4) <= 0.05  # a random model; the bench reports
    config = json.loads((out / "config.json").read_text())
    assert config["zero_expert_bias"] == record["zero_expert_bias"] != 0.0
    original = json.loads((tokenized_student / "config.json").read_text())
    assert "zero_expert_bias" not in original or original["zero_expert_bias"] == 0.0
    # The copy serves at the calibrated share (its config carries the dial).
    assert load_zeda_model(out).config.zero_expert_bias == record["zero_expert_bias"]
    # Never overwrites; bad input is refused before any work.
    assert calibrate_main(argv) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert calibrate_main([*args, "--target-zero-share", "1.5"]) == 2
    assert "must be in (0, 1)" in capsys.readouterr().err
    bad = ["--model", str(tokenized_student), "--families", "poetry", "--target-zero-share", "0.5"]
    assert calibrate_main(bad) == 2
    assert "no such task family" in capsys.readouterr().err


def test_calibrate_refuses_a_static_model(static_checkpoints, capsys):
    """A model without zero experts passed where a ZEDA student belongs: one line, exit 2."""
    static = str(static_checkpoints["qwen3_moe"])
    assert calibrate_main(["--model", static, "--target-zero-share", "0.5"]) == 2
    assert "not a ZEDA checkpoint" in capsys.readouterr().err


def test_eval_cli_refuses_a_bad_dial(static_checkpoints, capsys):
    from zeda_rl.eval.__main__ import main

    assert main(["--model", str(static_checkpoints["qwen3_moe"]), "--zero-bias", "1"]) == 2
    assert "need a ZEDA checkpoint" in capsys.readouterr().err
    assert main(["--model", str(static_checkpoints["qwen3_moe"]), "--zero-bias", "nan"]) == 2
    assert "finite" in capsys.readouterr().err
    assert main(["--model", str(static_checkpoints["qwen3_moe"]), "--routing-top-k", "0"]) == 2
