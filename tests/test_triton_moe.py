"""The fused Triton MoE kernels (zeda_kernels/triton_moe.py) against the torch reference: the
cases in tests/triton_cases.py, on CUDA when there is one, else on CPU through Triton's
interpreter in a fresh process (the interpreter must be on before triton is first imported,
and this process has imported it already)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CASES = Path(__file__).with_name("triton_cases.py")


def test_triton_kernels_match_the_torch_reference():
    pytest.importorskip("triton")
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
