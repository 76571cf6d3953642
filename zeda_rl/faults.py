"""Faults a run injects into itself at chosen stage-2 steps: recovery drills on a real
cluster (does this deployment survive a lost rank?) and the fault-injection tests.

Each entry of ``faults.stage2`` is ``<kind>:<target>@<step>`` and fires once, at the start
of that step (after the step's health check, so a kill is met by the step's own calls):

- ``kill:rollout-<i>`` / ``kill:teacher-0`` / ``kill:trainer-<rank>``: SIGKILL the actor's
  process from inside it, as the OOM killer or a lost node would;
- ``hang:rollout-<i>`` / ``hang:teacher-0``: the engine starts a call that never returns
  (the step's call to it times out after ``resources.timeout_s``);
- ``sigterm:driver``: the driver gets a scheduler's SIGTERM;
- ``nan:teacher``: the teacher's scores of that step become NaN (the step is skipped).

A fault fires once per launch: steps redone after a trainer rebuild do not fire it again.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zeda_rl.pools.placement import Pools
    from zeda_rl.trainer.batch import Sample

log = logging.getLogger(__name__)

# The pools each kind applies to; True: an actor of the pool, named by its rank.
TARGETS: dict[str, dict[str, bool]] = {
    "kill": {"rollout": True, "teacher": True, "trainer": True},
    "hang": {"rollout": True, "teacher": True},
    "sigterm": {"driver": False},
    "nan": {"teacher": False},
}
_SPEC = re.compile(r"^(?P<kind>[a-z]+):(?P<pool>[a-z]+)(?:-(?P<rank>\d+))?@(?P<step>\d+)$")


@dataclass(frozen=True)
class Fault:
    kind: str
    pool: str  # rollout | teacher | trainer | driver
    rank: int | None
    step: int

    @property
    def target(self) -> str:
        return self.pool if self.rank is None else f"{self.pool}-{self.rank}"


def parse_fault(spec: str, rollout_workers: int, trainer_workers: int) -> Fault:
    """One ``<kind>:<target>@<step>`` entry; ValueError saying what is wrong with it."""
    match = _SPEC.match(spec.strip())
    if match is None:
        raise ValueError(f"{spec!r} is not <kind>:<target>@<step> (e.g. kill:trainer-0@3)")
    kind, pool, rank = match["kind"], match["pool"], match["rank"]
    fault = Fault(kind, pool, None if rank is None else int(rank), int(match["step"]))
    if kind not in TARGETS:
        raise ValueError(f"{spec!r}: unknown kind {kind!r} (one of {', '.join(TARGETS)})")
    pools = TARGETS[kind]
    if pool not in pools or pools[pool] != (rank is not None):
        named = [f"{p}-<rank>" if ranked else p for p, ranked in pools.items()]
        raise ValueError(f"{spec!r}: {kind} takes {' or '.join(named)}")
    size = {"rollout": rollout_workers, "teacher": 1, "trainer": trainer_workers}.get(pool, 1)
    if fault.rank is not None and fault.rank >= size:
        raise ValueError(f"{spec!r}: the run has {size} {pool} actor(s)")
    return fault


class FaultPlan:
    """The run's pending faults; ``before_step`` fires those of a step once."""

    def __init__(self, faults: list[Fault]):
        self.pending = list(faults)

    def _due(self, step: int, kinds: tuple[str, ...]) -> list[Fault]:
        due = [f for f in self.pending if f.step == step and f.kind in kinds]
        self.pending = [f for f in self.pending if f not in due]
        return due

    def before_step(self, step: int, pools: Pools) -> None:
        for fault in self._due(step, ("kill", "hang", "sigterm")):
            log.warning("fault injection, stage2 step %d: %s %s", step, fault.kind, fault.target)
            if fault.kind == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
                continue
            actor = {
                "rollout": pools.rollout_group,
                "teacher": pools.teacher_group,
                "trainer": pools.trainer_group,
            }[fault.pool].actors[fault.rank or 0]
            # Queued on the actor like any call: it runs before the step's own calls.
            actor.__ray_call__.remote(_sigkill_self if fault.kind == "kill" else _hang)

    def corrupt_scores(self, step: int, samples: list[Sample]) -> list[Sample]:
        """``nan:teacher``: every sample's teacher scores of this step become NaN."""
        if not self._due(step, ("nan",)):
            return samples
        log.warning("fault injection, stage2 step %d: NaN teacher scores", step)
        return [_nan_scores(s) for s in samples]


def _nan_scores(sample: Sample) -> Sample:
    per_token, top_k = sample.teacher_logprobs, sample.teacher_topk_logprobs
    return replace(
        sample,
        teacher_logprobs=None if per_token is None else [math.nan] * len(per_token),
        teacher_topk_logprobs=None if top_k is None else top_k * math.nan,
    )


def _sigkill_self(_actor) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _hang(_actor) -> None:
    import time

    while True:
        time.sleep(3600)
