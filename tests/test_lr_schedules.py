import pytest

from zeda_rl.lr_schedules import constant_then_cosine_lr, cosine_lr


def test_stage1_warms_up_then_decays_to_zero():
    lrs = [cosine_lr(step, 100, 1.0, 0.1) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] < 0.001


def test_stage2_is_constant_without_decay():
    assert {constant_then_cosine_lr(step, 50, 3e-4, 0.0) for step in range(50)} == {3e-4}


def test_stage2_anneals_over_its_last_share_only():
    lrs = [constant_then_cosine_lr(step, 100, 1.0, 0.25) for step in range(100)]
    assert lrs[:75] == [1.0] * 75
    tail = lrs[75:]
    assert all(a > b for a, b in zip(tail, tail[1:], strict=False))
    # Every annealed step still moves the weights, and the last one only a little.
    assert 0 < tail[-1] < 0.01 and tail[0] > 0.99
