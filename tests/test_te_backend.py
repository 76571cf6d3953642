"""The ``te`` experts backend (zeda_kernels/te_moe.py) on CPU, driven through a torch model of
transformer-engine's calls (tests/fake_transformer_engine.py): its control flow against the
torch reference. TE itself is CUDA-only; tests/test_gpu.py runs the backend on it."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from tests import fake_transformer_engine
from tests.conftest import FAMILIES, MOE_CASES, assert_model_matches_reference_on, moe_case
from zeda_kernels import backend_unavailable, grouped_experts_forward, moe_dispatch


@pytest.fixture
def fake_te(monkeypatch):
    from zeda_kernels import te_moe

    calls = fake_transformer_engine.Calls()
    package = fake_transformer_engine.build(calls)
    monkeypatch.setitem(sys.modules, "transformer_engine", package)
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", package.pytorch)
    te_moe._te.cache_clear()
    te_moe._grouped_linear.cache_clear()
    yield calls
    te_moe._te.cache_clear()
    te_moe._grouped_linear.cache_clear()


def _both(name: str, grad: bool = False):
    x, ids, w, gate_up, down = moe_case(**MOE_CASES[name])
    n = MOE_CASES[name]["num_real"]
    results = {}
    for backend in ("torch", "te"):
        leaves = [t.clone().requires_grad_(grad) for t in (x, w, gate_up, down)]
        out = grouped_experts_forward(
            leaves[0], ids, leaves[1], leaves[2], leaves[3], num_real_experts=n, backend=backend
        )
        if grad:
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[backend] = (out.detach(), [t.grad for t in leaves])
    return ids, n, results


@pytest.mark.parametrize("name", sorted(MOE_CASES))
def test_te_forward_matches_reference_and_computes_real_picks_only(fake_te, name):
    ids, n, results = _both(name)
    out, ref = results["te"][0], results["torch"][0]
    assert torch.allclose(out, ref, atol=1e-5, rtol=0), (out - ref).abs().max()
    assert torch.all(out[(ids >= n).all(-1)] == 0)
    real = int((ids < n).sum())
    if real == 0:
        assert fake_te.gemm_rows == [] and fake_te.permute_ids == []  # TE never called
        return
    assert fake_te.gemm_rows == [real, real]  # gate/up and down saw the real picks only
    (permuted,) = fake_te.permute_ids
    # Zero picks enter TE as the sentinel id N (sorted last, cut off), never as -1.
    assert torch.equal(permuted.long() == n, ids >= n) and int(permuted.min()) >= 0


@pytest.mark.parametrize("name", ["mixed", "one_expert", "odd_sizes"])
def test_te_gradients_match_reference(fake_te, name):
    ids, n, results = _both(name, grad=True)
    for mine, ref in zip(results["te"][1], results["torch"][1], strict=True):
        assert torch.allclose(mine, ref, atol=1e-5, rtol=1e-5)
    assert torch.all(results["te"][1][1][ids >= n] == 0)  # zero picks' weights: no gradient


def test_minus_one_drops_would_lose_real_picks(fake_te):
    """Why the backend sends sentinels: on TE's index map a -1 pick sorts first, so cutting
    at the number of real picks drops a real one instead (TE issue 2908)."""
    te = sys.modules["transformer_engine.pytorch"]
    ids = torch.tensor([[0, -1], [1, 0]], dtype=torch.int32)
    _, row_map = te.moe_permute(torch.randn(2, 4), ids, num_out_tokens=3, map_type="index")
    kept = row_map.view(2, 2).t() >= 0  # [T, K]
    assert not torch.equal(kept, ids >= 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_zeda_model_through_the_te_backend(fake_te, monkeypatch, tmp_path, family):
    """A whole ZEDA model's MoE layers through the backend ('auto' picks it on CUDA when
    kernels.experts_backend=te): the reference path's logits and gradients."""
    assert_model_matches_reference_on("te", family, tmp_path, monkeypatch)
    assert fake_te.gemm_rows  # the MoE layers went through TE


def test_te_needs_the_index_map(fake_te):
    from zeda_kernels import te_moe

    te = sys.modules["transformer_engine.pytorch"]
    te.moe_permute = lambda inp, indices, num_out_tokens=-1, max_token_num=-1: None  # TE 1.x
    with pytest.raises(RuntimeError, match=">= 2.1"):
        te_moe._te()


def test_auto_backend_follows_the_override_on_cuda_only(monkeypatch):
    cuda = types.SimpleNamespace(is_cuda=True)  # default_backend only asks the device
    monkeypatch.setenv(moe_dispatch.BACKEND_ENV, "te")
    assert moe_dispatch.default_backend(cuda) == "te"
    assert moe_dispatch.default_backend(torch.zeros(1)) == "torch"  # CPU: the reference
    monkeypatch.setenv(moe_dispatch.BACKEND_ENV, "cutlass")
    with pytest.raises(ValueError, match="ZEDA_EXPERTS_BACKEND='cutlass'"):
        moe_dispatch.default_backend(cuda)
    monkeypatch.delenv(moe_dispatch.BACKEND_ENV)
    assert moe_dispatch.default_backend(cuda) in ("triton", "te", "torch")


def test_unavailable_backends_say_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert backend_unavailable("torch", cuda=False) is None
    assert backend_unavailable("auto", cuda=False) is None
    assert "needs CUDA" in backend_unavailable("triton", cuda=False)
    assert "unknown experts backend" in backend_unavailable("cutlass", cuda=True)
    if importlib.util.find_spec("transformer_engine") is None:  # CPU machines: never there
        assert "needs transformer-engine" in backend_unavailable("te", cuda=True)


def test_the_backend_choice_reaches_every_actor():
    """kernels.experts_backend travels to Ray's actors (and the vLLM processes they start)
    as the environment variable auto reads; 'auto' adds nothing."""
    from zeda_rl.config import RunConfig
    from zeda_rl.orchestrator import _runtime_env

    cfg = RunConfig()
    assert _runtime_env(cfg) is None
    cfg.kernels.experts_backend = "te"
    assert _runtime_env(cfg) == {"env_vars": {moe_dispatch.BACKEND_ENV: "te"}}
