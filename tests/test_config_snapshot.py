"""Each experiment's composed config against a committed snapshot (as verl does): a default
that changes silently shows up in review as a diff of tests/snapshots/<experiment>.yaml.

After an intended change: ZEDA_UPDATE_SNAPSHOTS=1 pytest tests/test_config_snapshot.py
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from tests.test_launch import _compose

SNAPSHOTS = Path(__file__).parent / "snapshots"
EXPERIMENTS = sorted(
    p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml")
)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_composed_config_matches_snapshot(experiment):
    from omegaconf import OmegaConf

    cfg = _compose(f"+experiment={experiment}")
    text = OmegaConf.to_yaml(cfg)
    path = SNAPSHOTS / f"{experiment}.yaml"
    if os.environ.get("ZEDA_UPDATE_SNAPSHOTS") == "1":
        path.write_text(text)
    assert path.is_file(), f"no snapshot {path}: run with ZEDA_UPDATE_SNAPSHOTS=1"
    expected = path.read_text()
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True), text.splitlines(keepends=True), str(path), "now"
        )
    )
    assert text == expected, f"the composed config of {experiment} changed:\n{diff}"


def test_every_experiment_has_a_snapshot():
    assert sorted(p.stem for p in SNAPSHOTS.glob("*.yaml")) == EXPERIMENTS
