"""Atomic, verifiable checkpoints of the adaptation run.

A checkpoint is a folder ``<stage>-<step>`` holding the student (transformers format), the
optimizer state, ``state.json`` (where the run stands) and ``manifest.json`` (sha256 and
size of every file). It is written into a hidden temporary folder and renamed into place
only when complete, so a crash mid-write never leaves a half checkpoint that looks valid;
on resume the newest checkpoint whose manifest verifies is used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zeda_rl.config import RunConfig
    from zeda_rl.pools.group import ActorGroup

STAGES = ("stage1", "stage2")
MANIFEST, STATE = "manifest.json", "state.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _name(stage: str, step: int) -> str:
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: one of {STAGES}")
    return f"{stage}-{step:06d}"


def save_checkpoint(
    root: Path, stage: str, step: int, write: Callable[[Path], None], state: dict, keep: int
) -> Path:
    """``write(folder)`` fills the folder (model, optimizer); returns the final path."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / _name(stage, step)
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    (tmp / STATE).write_text(json.dumps({"stage": stage, "step": step, **state}, indent=2))
    files = {
        str(p.relative_to(tmp)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    (tmp / MANIFEST).write_text(
        json.dumps({"stage": stage, "step": step, "files": files}, indent=2)
    )
    if final.exists():  # a re-run of the same step after a resume: replace it whole
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def verify(path: Path) -> bool:
    """Every file the manifest lists is there with its size and sha256."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        return all(
            (path / name).is_file()
            and (path / name).stat().st_size == entry["bytes"]
            and _sha256(path / name) == entry["sha256"]
            for name, entry in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError):
        return False


def list_checkpoints(root: Path) -> list[Path]:
    """Completed checkpoint folders in run order (stage 1 before stage 2, then by step)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        stage, _, step = p.name.partition("-")
        if p.is_dir() and stage in STAGES and step.isdigit():
            found.append((STAGES.index(stage), int(step), p))
    return [p for *_, p in sorted(found)]


def latest_checkpoint(root: Path, log=print) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies, and its state; corrupt ones are skipped."""
    for path in reversed(list_checkpoints(root)):
        if verify(path):
            return path, json.loads((path / STATE).read_text())
        log(f"checkpoint {path} fails verification (incomplete or corrupted): skipped")
    return None


# -- the run's checkpointer and where a resumed run starts ------------------------------------


def checkpoint_root(cfg: RunConfig, run_dir: Path) -> Path:
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else run_dir / "checkpoints"


class Checkpointer:
    """Saves at ``checkpoint.every_steps`` and at each stage's last step; all trainer ranks
    take part (the save is collective), rank 0 writes."""

    def __init__(self, cfg: RunConfig, trainers: ActorGroup, run_dir: Path):
        self.cfg, self.trainers, self.run_dir = cfg, trainers, run_dir
        self.root = checkpoint_root(cfg, run_dir)

    def maybe_save(self, stage: str, step: int, last_step: bool) -> Path | None:
        every = self.cfg.checkpoint.every_steps
        if not last_step and not (every > 0 and (step + 1) % every == 0):
            return None
        state = {"seed": self.cfg.seed, "stage_complete": last_step}
        return save_checkpoint(
            self.root,
            stage,
            step,
            lambda folder: self.trainers.call("save", str(folder)),
            state,
            self.cfg.checkpoint.keep,
        )


@dataclass
class ResumePoint:
    """Where a resumed run starts: the checkpoint's weights, and the first step of each
    stage to run (-1: the stage is already complete)."""

    weights_dir: Path
    state: dict
    stage1_start: int
    stage2_start: int

    @property
    def stage1_complete(self) -> bool:
        return self.stage1_start < 0 and self.state["stage"] == "stage1"


def resume_point(cfg: RunConfig, run_dir: Path, log=print) -> ResumePoint | None:
    """The newest verified checkpoint of the run and the steps it resumes at; None (and a
    warning) when there is none."""
    found = latest_checkpoint(checkpoint_root(cfg, run_dir), log=log)
    if found is None:
        log("checkpoint.resume=true but no valid checkpoint found: starting fresh")
        return None
    path, state = found
    if state["stage"] == "stage1" and not state.get("stage_complete"):
        return ResumePoint(path, state, state["step"] + 1, 0)
    if state["stage"] == "stage1":  # at the boundary: stage 1 is done
        return ResumePoint(path, state, -1, 0)
    return ResumePoint(path, state, -1, state["step"] + 1)
