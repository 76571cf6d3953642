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
