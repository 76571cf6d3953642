"""The control flow of fault handling, in-process: how often a lost trainer is rebuilt, and an
injected fault firing once. (The real thing, actors killed in a running pipeline:
tests/test_pipeline.py::test_faults_then_sigterm_then_resume_equal_the_uninterrupted_run.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

from zeda_rl.faults import FaultPlan, parse_fault
from zeda_rl.orchestrator import RunStopped, with_trainer_restarts
from zeda_rl.pools.group import GroupLost
from zeda_rl.trainer.batch import Sample


def _losing(group: str, times: int):
    """An attempt that loses a member of ``group`` ``times`` times, then succeeds."""
    calls = {"attempts": 0, "recoveries": 0}

    def attempt() -> None:
        calls["attempts"] += 1
        if calls["attempts"] <= times:
            raise GroupLost(group, RuntimeError("worker died\nten more lines of Ray's report"))

    def recover() -> None:
        calls["recoveries"] += 1

    return attempt, recover, calls


def test_a_lost_trainer_is_rebuilt_at_most_max_restarts_times():
    attempt, recover, calls = _losing("trainer", times=2)
    assert with_trainer_restarts(attempt, recover, max_restarts=2) == 2
    assert calls == {"attempts": 3, "recoveries": 2}

    attempt, recover, calls = _losing("trainer", times=3)
    with pytest.raises(RunStopped, match=r"after 2 restart\(s\) \(trainer.max_restarts=2\)"):
        with_trainer_restarts(attempt, recover, max_restarts=2)
    assert calls == {"attempts": 3, "recoveries": 2}

    attempt, recover, _ = _losing("trainer", times=1)
    with pytest.raises(RunStopped, match="worker died\\)") as stopped:
        with_trainer_restarts(attempt, recover, max_restarts=0)
    assert "ten more lines" not in str(stopped.value)  # the cause's first line only


def test_a_lost_engine_group_is_not_a_trainer_restart():
    attempt, recover, calls = _losing("rollout", times=1)
    with pytest.raises(GroupLost, match="the rollout group lost a member"):
        with_trainer_restarts(attempt, recover, max_restarts=2)
    assert calls["recoveries"] == 0


def test_an_injected_fault_fires_once():
    """A step redone after a trainer rebuild does not meet its fault again."""
    plan = FaultPlan([parse_fault("nan:teacher@3", 1, 2)])
    samples = [
        Sample([1, 2], [3, 4], teacher_logprobs=[-0.5, -1.0]),
        Sample([1], [5], teacher_topk_logprobs=np.zeros((2, 4), dtype=np.float32)),
    ]
    assert plan.corrupt_scores(2, samples) is samples
    corrupted = plan.corrupt_scores(3, samples)
    assert all(math.isnan(x) for x in corrupted[0].teacher_logprobs)
    assert np.isnan(corrupted[1].teacher_topk_logprobs).all()
    assert corrupted[1].teacher_logprobs is None
    assert plan.corrupt_scores(3, samples) is samples  # fired already
    assert not plan.pending


def test_fault_specs_name_their_targets():
    fault = parse_fault(" kill:trainer-1@12 ", rollout_workers=2, trainer_workers=2)
    assert (fault.kind, fault.target, fault.step) == ("kill", "trainer-1", 12)
    assert parse_fault("sigterm:driver@0", 1, 1).target == "driver"
    with pytest.raises(ValueError, match="the run has 2 rollout actor"):
        parse_fault("hang:rollout-2@1", rollout_workers=2, trainer_workers=2)
