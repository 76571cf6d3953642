"""The run's metrics: every step to metrics.jsonl, the console a bar per stage with the
headline metrics in its postfix and a full line every ``logging.log_every`` steps."""

from __future__ import annotations

import json

from zeda_rl.tracking import Tracker


def test_every_step_is_kept_and_the_console_gets_a_line_every_n(tmp_path, capsys):
    tracker = Tracker(tmp_path, {}, use_wandb=False, mode="disabled", project="t", log_every=3)
    steps = range(0, 7)
    for step in tracker.progress(steps, "stage 2"):
        metrics = {"loss": 1.0 / (step + 1), "zero_ratio": 0.5, "lr": 1e-4}
        tracker.log("stage2", step, metrics, last_step=step == 6)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(steps) and rows[0]["lr"] == 1e-4
    console = capsys.readouterr()
    lines = [x for x in (console.out + console.err).splitlines() if x.startswith("[stage2")]
    # Steps 2 and 5 (every third), and the last.
    assert [int(x.split("]")[0].split()[-1]) for x in lines] == [2, 5, 6]
    assert tracker.bar.postfix.startswith("loss=0.1429, zero_ratio=0.5")


def test_log_every_zero_prints_only_the_last_step(tmp_path, capsys):
    tracker = Tracker(tmp_path, {}, use_wandb=False, mode="disabled", project="t", log_every=0)
    for step in tracker.progress(range(4), "stage 1"):
        tracker.log("stage1", step, {"loss": 1.0}, last_step=step == 3)
    console = capsys.readouterr()
    lines = [x for x in (console.out + console.err).splitlines() if x.startswith("[stage1")]
    assert len(lines) == 1 and lines[0].startswith("[stage1    3]")


def test_a_resumed_run_drops_the_abandoned_tail_of_the_log(tmp_path):
    tracker = Tracker(tmp_path, {}, use_wandb=False, mode="disabled", project="t")
    for stage, steps in (("stage1", 4), ("stage2", 6)):
        for step in range(steps):
            tracker.log(stage, step, {"loss": 1.0}, console=False)
    # Killed after stage-2 step 5; the newest checkpoint is stage 2 step 2.
    tracker.truncate_after("stage2", 2)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [
        *(("stage1", s) for s in range(4)),
        *(("stage2", s) for s in range(3)),
    ]
    tracker.truncate_after("stage1", 1)  # a stage-1 checkpoint drops all of stage 2
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [("stage1", 0), ("stage1", 1)]
