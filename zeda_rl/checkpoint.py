"""Atomic, verifiable checkpoints of the adaptation run.

A checkpoint is a folder ``<stage>-<step>`` holding the student (transformers format), the
optimizer state, ``state.json`` (where the run stands) and ``manifest.json`` (sha256 and
size of every file). It is written into a hidden temporary folder and renamed into place
only when complete, so a crash mid-write never leaves a half checkpoint that looks valid;
on resume the newest checkpoint whose manifest verifies is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import time
from collections.abc import Callable, Iterator
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


class Preempted(Exception):
    """The run was asked to stop (SIGTERM / SIGINT) and saved a checkpoint first."""

    def __init__(self, signal_name: str, checkpoint: Path):
        super().__init__(
            f"stopped by {signal_name} after writing {checkpoint}; relaunch with "
            "checkpoint.resume=true and the same hydra.run.dir to continue"
        )
        self.signal_name, self.checkpoint = signal_name, checkpoint


class Checkpointer:
    """Saves at ``checkpoint.every_steps``, every ``checkpoint.every_minutes``, at each
    stage's last step, and after the step in flight when the driver gets SIGTERM or SIGINT
    (then raises ``Preempted``). All trainer ranks take part (the save is collective), rank
    0 writes."""

    def __init__(self, cfg: RunConfig, trainers: ActorGroup, run_dir: Path):
        self.cfg, self.trainers, self.run_dir = cfg, trainers, run_dir
        self.root = checkpoint_root(cfg, run_dir)
        self.last_save = time.monotonic()
        self.stop_signal: str | None = None  # set by the signal handler

    @contextlib.contextmanager
    def on_signals(self) -> Iterator[None]:
        """While inside: SIGTERM / SIGINT ask for a checkpoint and a clean stop after the
        current step, instead of killing the driver mid-step."""

        def ask(signum, _frame):
            self.stop_signal = signal.Signals(signum).name

        previous = {s: signal.signal(s, ask) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def maybe_save(self, stage: str, step: int, last_step: bool) -> Path | None:
        c = self.cfg.checkpoint
        due = (
            last_step
            or (c.every_steps > 0 and (step + 1) % c.every_steps == 0)
            or (c.every_minutes > 0 and time.monotonic() - self.last_save >= 60 * c.every_minutes)
            or self.stop_signal is not None
        )
        if not due:
            return None
        state = {"seed": self.cfg.seed, "stage_complete": last_step}
        path = save_checkpoint(
            self.root,
            stage,
            step,
            lambda folder: self.trainers.call("save", str(folder)),
            state,
            c.keep,
        )
        self.last_save = time.monotonic()
        if self.stop_signal is not None:
            raise Preempted(self.stop_signal, path)
        return path


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
    root = checkpoint_root(cfg, run_dir)
    found = latest_checkpoint(root, log=log)
    if found is None:
        log(f"no valid checkpoint under {root}: starting from the converted student")
        return None
    path, state = found
    if state["stage"] == "stage1" and not state.get("stage_complete"):
        return ResumePoint(path, state, state["step"] + 1, 0)
    if state["stage"] == "stage1":  # at the boundary: stage 1 is done
        return ResumePoint(path, state, -1, 0)
    return ResumePoint(path, state, -1, state["step"] + 1)
