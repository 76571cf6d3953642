"""Checkpoints are atomic and verified: a corrupted or half-written one is never resumed."""

from __future__ import annotations

from pathlib import Path

from zeda_rl.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint, verify


def _write(payload: bytes):
    def write(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(payload)
        (folder / "sub").mkdir()
        (folder / "sub" / "optimizer.pt").write_bytes(payload[::-1])

    return write


def test_save_verify_prune_and_resume_order(tmp_path):
    root = tmp_path / "ckpt"
    for stage, step in (("stage1", 4), ("stage1", 9), ("stage2", 0), ("stage2", 1)):
        path = save_checkpoint(root, stage, step, _write(b"w" * 100 + bytes([step])), {}, keep=3)
        assert verify(path)
    # keep=3: the oldest (stage 1, step 4) is gone; order is stage 1 before stage 2.
    assert [p.name for p in list_checkpoints(root)] == [
        "stage1-000009",
        "stage2-000000",
        "stage2-000001",
    ]
    path, state = latest_checkpoint(root)
    assert path.name == "stage2-000001" and state == {"stage": "stage2", "step": 1}

    # A flipped byte: the newest fails verification and the one before is used.
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[3] ^= 0xFF
    weights.write_bytes(bytes(data))
    skipped = []
    path, state = latest_checkpoint(root, log=skipped.append)
    assert path.name == "stage2-000000" and len(skipped) == 1
    # A missing file and a half-written (never renamed) folder are never picked either.
    (path / "sub" / "optimizer.pt").unlink()
    (root / ".tmp-stage2-000005").mkdir()
    path, _ = latest_checkpoint(root, log=skipped.append)
    assert path.name == "stage1-000009"


def test_no_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path / "none") is None
    assert list_checkpoints(tmp_path) == []


class _Trainers:
    """The trainer group's collective save, in-process: rank 0 writes a model file."""

    def call(self, method: str, folder: str) -> None:
        assert method == "save"
        (Path(folder) / "model.safetensors").write_bytes(b"weights")


def _checkpointer(tmp_path, **checkpoint):
    from zeda_rl.checkpoint import Checkpointer
    from zeda_rl.config import RunConfig

    cfg = RunConfig()
    for key, value in checkpoint.items():
        setattr(cfg.checkpoint, key, value)
    return Checkpointer(cfg, _Trainers(), tmp_path)


def test_sigterm_writes_a_checkpoint_after_the_step_and_stops(tmp_path):
    """A scheduler's pre-emption: the handler only asks; the step in flight finishes, its
    checkpoint is written (verifiable, resumable), then Preempted stops the run."""
    import os
    import signal

    import pytest

    from zeda_rl.checkpoint import Preempted

    ckpt = _checkpointer(tmp_path, every_steps=0)
    before = signal.getsignal(signal.SIGTERM)
    with ckpt.on_signals():
        assert ckpt.maybe_save("stage2", 3, last_step=False) is None  # not due
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the handler, not fatal
        with pytest.raises(Preempted, match="stopped by SIGTERM") as stop:
            ckpt.maybe_save("stage2", 4, last_step=False)
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back
    assert stop.value.checkpoint.name == "stage2-000004" and verify(stop.value.checkpoint)
    path, state = latest_checkpoint(tmp_path / "checkpoints")
    assert path == stop.value.checkpoint and state["step"] == 4


def test_every_minutes_saves_on_a_time_budget(tmp_path, monkeypatch):
    import zeda_rl.checkpoint as module

    clock = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])
    ckpt = _checkpointer(tmp_path, every_minutes=2.0)
    clock[0] += 60
    assert ckpt.maybe_save("stage2", 0, last_step=False) is None
    clock[0] += 61
    assert ckpt.maybe_save("stage2", 1, last_step=False).name == "stage2-000001"
    clock[0] += 60
    assert ckpt.maybe_save("stage2", 2, last_step=False) is None  # the clock restarted
