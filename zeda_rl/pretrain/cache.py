"""Trained teachers are cached by recipe: the same preset, family, seed and data reuse one."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from zeda_rl.data.store import ARCHIVES
from zeda_rl.pretrain.presets import PRESETS, TeacherPreset, with_overrides

# Bump when the training code changes what a recipe produces.
RECIPE_VERSION = 1
# Recipe fields added after teachers were cached: left out of the key while they hold the
# value that reproduces the old training, so those caches stay valid.
LATER_FIELDS = {"min_lr_ratio": 0.1, "task_loss": "all"}


def cache_root() -> Path:
    return Path(os.environ.get("ZEDA_CACHE_DIR", Path.home() / ".cache" / "zeda_rl"))


def teacher_key(family: str, preset: TeacherPreset, seed: int) -> str:
    blob = json.dumps(
        {
            "family": family,
            # The recipe this family actually trains with: another family's overrides do
            # not invalidate its cache.
            "preset": {
                k: v
                for k, v in preset.for_family(family).to_dict().items()
                if k not in LATER_FIELDS or v != LATER_FIELDS[k]
            },
            "seed": seed,
            "recipe": RECIPE_VERSION,
            "data": {k: a.sha256 for k, a in sorted(ARCHIVES.items())},
        },
        sort_keys=True,
    )
    return f"{family}-{preset.name}-s{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def teacher_dir(family: str, preset_name: str, seed: int = 0) -> Path:
    return cache_root() / "teachers" / teacher_key(family, PRESETS[preset_name], seed)


def ensure_teacher(
    family: str,
    preset_name: str = "cpu",
    seed: int = 0,
    force: bool = False,
    log=print,
    overrides: dict | None = None,
) -> Path:
    """The folder of a trained teacher, training it first if the cache has none.
    ``overrides`` replace fields of the family's recipe (after its family overrides); the
    cache key covers them, so each variant is trained once."""
    from zeda_rl.pretrain.train import train_teacher

    if preset_name not in PRESETS:
        raise ValueError(f"teacher preset {preset_name!r} unknown; choose one of {sorted(PRESETS)}")
    preset = PRESETS[preset_name]
    if overrides:
        preset = with_overrides(preset.for_family(family), overrides)
    path = cache_root() / "teachers" / teacher_key(family, preset, seed)
    if (path / "report.json").is_file() and not force:
        log(f"teacher cached: {path}")
        return path
    log(f"training the {family} teacher ({preset_name} preset, seed {seed}) into {path}")
    train_teacher(family, preset, path, seed=seed, log=log)
    return path
