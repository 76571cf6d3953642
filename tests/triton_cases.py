"""Cases for the fused Triton MoE kernels against the torch reference, on small shapes.

Run by tests/test_triton_moe.py: directly on CUDA, else in a fresh process under Triton's
interpreter (``TRITON_INTERPRET=1`` must be set before anything imports triton).

Tolerances: fp32 1e-5 absolute (ieee dot products, fp32 accumulation in both); bf16 3e-2
(the kernels accumulate in fp32 and round once, the reference rounds per expert).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
triton_moe = pytest.importorskip("zeda_kernels.triton_moe")

from tests.conftest import MOE_CASES as CASES  # noqa: E402
from tests.conftest import moe_case as _case  # noqa: E402
from zeda_kernels.moe_dispatch import ExpertsCall, grouped_experts_forward  # noqa: E402


@pytest.mark.parametrize("name", sorted(CASES))
def test_align_groups_only_real_slots(name):
    x, ids, *_ = _case(**CASES[name])
    num_real, block_m = CASES[name]["num_real"], 16
    layout = triton_moe.align_real_slots(ids, num_real, block_m)
    sorted_slots, block_expert, counts, starts, slot_pos = layout
    num_slots = ids.numel()
    flat = ids.reshape(-1)
    # slot_pos inverts the grouping: each real slot's row, -1 for every zero pick.
    assert torch.equal(slot_pos < 0, flat >= num_real)
    rows = torch.nonzero(sorted_slots < num_slots).flatten()
    assert torch.equal(slot_pos[sorted_slots[rows].long()].long(), rows)
    assert counts.tolist() == torch.bincount(flat[flat < num_real], minlength=num_real).tolist()
    used = sorted_slots[sorted_slots < num_slots]
    # Every real slot exactly once, no zero slot at all.
    assert sorted(used.tolist()) == torch.nonzero(flat < num_real).flatten().tolist()
    # Each block holds slots of its expert only; padding only at the end of an expert's run.
    for b, expert in enumerate(block_expert.tolist()):
        block = sorted_slots[b * block_m : (b + 1) * block_m]
        real = block[block < num_slots]
        if expert >= num_real:
            assert real.numel() == 0
            continue
        assert torch.all(flat[real.long()] == expert)
    assert block_expert.numel() * block_m == sorted_slots.numel()
    # Used blocks come first and number at most the slots: the launch bound holds.
    used = int((block_expert < num_real).sum())
    assert torch.all(block_expert[:used] < num_real) and torch.all(block_expert[used:] == num_real)
    assert used <= triton_moe.used_blocks_bound(block_expert.numel(), num_slots) <= num_slots
    for expert in range(num_real):  # each expert's run starts on a block boundary
        assert int(starts[expert]) % block_m == 0
    # Capacity is fixed by the shapes alone (CUDA-graph friendly).
    assert sorted_slots.numel() >= num_slots + num_real * (block_m - 1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_reference_fp32(name):
    x, ids, w, gate_up, down = _case(**CASES[name])
    n = CASES[name]["num_real"]
    ref = grouped_experts_forward(x, ids, w, gate_up, down, num_real_experts=n, backend="torch")
    out = grouped_experts_forward(x, ids, w, gate_up, down, num_real_experts=n, backend="triton")
    assert out.dtype == x.dtype
    assert torch.allclose(out, ref, atol=1e-5, rtol=0), (out - ref).abs().max()
    all_zero_tokens = (ids >= n).all(-1)
    assert torch.all(out[all_zero_tokens] == 0)  # exactly zero, not small


@pytest.mark.parametrize("name", ["mixed", "all_zero", "one_expert", "odd_sizes"])
def test_combine_reads_only_real_rows(name):
    """Rows of padding and of zero picks hold NaN here: the combine must never read them."""
    x, ids, *_ = _case(**CASES[name])
    num_real, top_k = CASES[name]["num_real"], CASES[name]["top_k"]
    layout = triton_moe.align_real_slots(ids, num_real, 16)
    hidden = x.shape[1]
    rows = torch.full((layout.sorted_slots.numel(), hidden), float("nan"))
    per_slot = torch.randn(ids.numel(), hidden, generator=torch.Generator().manual_seed(1))
    real = layout.slot_pos >= 0
    rows[layout.slot_pos[real].long()] = per_slot[real]
    out = triton_moe.combine_real_rows(rows, layout.slot_pos, ids.shape[0], top_k, torch.float32)
    expected = (per_slot * real[:, None]).view(ids.shape[0], top_k, hidden).sum(1)
    assert not out.isnan().any()
    assert torch.allclose(out, expected, atol=1e-6, rtol=0)
    assert torch.all(out[(ids >= num_real).all(-1)] == 0)


@pytest.mark.parametrize("name", ["mixed", "all_zero", "one_expert", "decode"])
def test_forward_atomic_accumulation_matches_reference(name):
    """deterministic=False: the down GEMM adds into the output (no per-pick row buffer)."""
    x, ids, w, gate_up, down = _case(**CASES[name])
    n = CASES[name]["num_real"]
    ref = grouped_experts_forward(x, ids, w, gate_up, down, num_real_experts=n, backend="torch")
    out = triton_moe.fused_experts_forward(
        ExpertsCall(x, ids, w, gate_up, down, n), deterministic=False
    )
    assert out.dtype == x.dtype
    assert torch.allclose(out, ref, atol=1e-5, rtol=0), (out - ref).abs().max()
    assert torch.all(out[(ids >= n).all(-1)] == 0)


def test_forward_matches_reference_bf16_and_large_blocks():
    x, ids, w, gate_up, down = _case(**CASES["mixed"])
    n = CASES["mixed"]["num_real"]
    ref = grouped_experts_forward(x, ids, w, gate_up, down, num_real_experts=n, backend="torch")
    bf = [t.bfloat16() for t in (x, gate_up, down)]
    out = grouped_experts_forward(bf[0], ids, w, bf[1], bf[2], num_real_experts=n, backend="triton")
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref, atol=3e-2, rtol=3e-2)
    # The prefill block shape (BLOCK_M 64) gives the same answer.
    big = triton_moe.fused_experts_forward(
        ExpertsCall(x, ids, w, gate_up, down, n), blocks=(64, 64, 32)
    )
    assert torch.allclose(big, ref, atol=1e-5, rtol=0)


def test_backward_matches_reference():
    x, ids, w, gate_up, down = _case(**CASES["mixed"])
    n = CASES["mixed"]["num_real"]
    grads = {}
    for backend in ("torch", "triton"):
        leaves = [t.clone().requires_grad_() for t in (x, w, gate_up, down)]
        out = grouped_experts_forward(
            leaves[0], ids, leaves[1], leaves[2], leaves[3], num_real_experts=n, backend=backend
        )
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[backend] = [t.grad for t in leaves]
    for mine, ref in zip(grads["triton"], grads["torch"], strict=True):
        assert torch.allclose(mine, ref, atol=1e-5, rtol=1e-5)
    # Zero slots get no gradient through the experts.
    assert torch.all(grads["triton"][1][ids >= n] == 0)


def test_only_silu_experts():
    x, ids, w, gate_up, down = _case(**CASES["no_zero"])
    with pytest.raises(ValueError, match="SiLU"):
        grouped_experts_forward(
            x, ids, w, gate_up, down, num_real_experts=4, activation=F.gelu, backend="triton"
        )


@pytest.mark.parametrize("family", ["qwen3_moe", "glm4_moe_lite"])
def test_zeda_model_through_the_fused_kernels(tmp_path, monkeypatch, family):
    """The transformers ZEDA model with its experts on the fused kernels ('auto' picks them
    on CUDA): the reference path's logits and gradients."""
    from tests.conftest import assert_model_matches_reference_on

    assert_model_matches_reference_on("triton", family, tmp_path, monkeypatch)
