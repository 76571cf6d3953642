"""Fused MoE in Triton that never touches a zero-expert pick, forward and backward.

Dataflow::

    topk_ids [T, K] --align_real_slots--> sorted_slots [P]   flat slots t*K+k grouped by real
                                          block_expert [P/BM] expert, each group padded to a
                                                               multiple of BLOCK_M; zero picks
                                                               are left out, not padded
                                          slot_pos [T*K]      each slot's row in that order,
                                                               -1 for a zero pick
    gate_up_kernel:  act[p]  = SiLU(x[t] W_g[e]^T) * (x[t] W_u[e]^T)   per block of one expert
    rows_times_expert (down): y[p] = w[slot] * act[p] W_d[e]^T   (one row per real pick)
    combine:  out[t] = sum_k y[slot_pos[t*K+k]] over the real k   fixed order: deterministic;
                                                                  zero picks are never read,
                                                                  all-zero tokens stay exactly 0
    (or, deterministic=False: the down GEMM atomically adds w * act W_d^T into out[t])

Buffers have fixed sizes (``P = T*K + N*(BLOCK_M-1)`` rows at most) and the launch grids
depend only on shapes, so a call can be captured in a CUDA graph; blocks past the used
length, or of no expert, exit at once. Only real picks are written or read: the memory
traffic of the combine follows the real picks, like the GEMMs. Without a GPU the same
kernels run under ``TRITON_INTERPRET=1`` (for tests on small shapes).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from zeda_kernels.moe_dispatch import ExpertsCall

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _count_kernel(ids_ptr, counts_ptr, num_slots, num_real, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < num_slots
    ids = tl.load(ids_ptr + offs, mask=inside, other=0)
    real = inside & (ids < num_real)
    tl.atomic_add(counts_ptr + ids, 1, mask=real)


@triton.jit
def _scatter_kernel(
    ids_ptr,
    starts_ptr,
    cursor_ptr,
    sorted_ptr,
    slot_pos_ptr,
    num_slots,
    num_real,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < num_slots
    ids = tl.load(ids_ptr + offs, mask=inside, other=0)
    real = inside & (ids < num_real)
    rank = tl.atomic_add(cursor_ptr + ids, 1, mask=real)
    start = tl.load(starts_ptr + ids, mask=real, other=0)
    tl.store(sorted_ptr + start + rank, offs, mask=real)
    tl.store(slot_pos_ptr + offs, tl.where(real, start + rank, -1), mask=inside)


class RealSlotLayout(NamedTuple):
    """Where every real pick goes in the expert-grouped order (``align_real_slots``)."""

    sorted_slots: torch.Tensor  # [P] flat slot t*K+k per row; num_slots marks padding
    block_expert: torch.Tensor  # [P // BLOCK_M] expert of each block; num_real: unused block
    counts: torch.Tensor  # [N] real picks per expert
    starts: torch.Tensor  # [N] first row of each expert's padded run
    slot_pos: torch.Tensor  # [T*K] row of each slot; -1 for a zero pick


def padded_counts(counts: torch.Tensor, block_m: int) -> torch.Tensor:
    """Rows each expert's run takes in the grouped order: its real picks rounded up to a
    whole number of ``block_m`` blocks (an expert with no real pick takes none)."""
    return (counts + block_m - 1) // block_m * block_m


def capacity_rows(num_slots: int, num_real: int, block_m: int) -> int:
    """Rows of the grouped buffers: every real slot plus each expert's padding at most, in
    whole blocks (a fixed size for the shapes: CUDA-graph safe)."""
    return triton.cdiv(num_slots + num_real * (block_m - 1), block_m) * block_m


def align_real_slots(topk_ids: torch.Tensor, num_real: int, block_m: int) -> RealSlotLayout:
    """Group the real slots of ``topk_ids`` by expert, padded per expert to ``block_m``;
    zero-expert slots get no row at all (``slot_pos`` -1)."""
    tokens, top_k = topk_ids.shape
    num_slots = tokens * top_k
    device = topk_ids.device
    ids = topk_ids.reshape(-1).to(torch.int32).contiguous()
    capacity = capacity_rows(num_slots, num_real, block_m)
    counts = torch.zeros(num_real, dtype=torch.int32, device=device)
    block = 256
    grid = (max(1, triton.cdiv(num_slots, block)),)
    _count_kernel[grid](ids, counts, num_slots, num_real, BLOCK=block)
    padded = padded_counts(counts, block_m)
    ends = torch.cumsum(padded, 0, dtype=torch.int32)
    starts = (ends - padded).contiguous()
    sorted_slots = torch.full((capacity,), num_slots, dtype=torch.int32, device=device)
    slot_pos = torch.empty(num_slots, dtype=torch.int32, device=device)
    cursor = torch.zeros(num_real, dtype=torch.int32, device=device)
    _scatter_kernel[grid](
        ids, starts, cursor, sorted_slots, slot_pos, num_slots, num_real, BLOCK=block
    )
    block_starts = torch.arange(0, capacity, block_m, device=device, dtype=torch.int32)
    # The expert whose padded range holds each block; num_real past the used length.
    block_expert = torch.searchsorted(ends, block_starts, right=True).to(torch.int32)
    return RealSlotLayout(sorted_slots, block_expert, counts, starts, slot_pos)


@triton.jit
def _combine_kernel(
    rows_ptr,
    slot_pos_ptr,
    out_ptr,
    top_k,
    n_cols,
    stride_r,
    stride_o,
    BLOCK_N: tl.constexpr,
):
    """out[t] = sum over k of rows[slot_pos[t*K+k]], in k order, skipping zero picks
    (slot_pos -1): their rows do not exist and are never read."""
    token = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k in range(top_k):
        # The slot's row, broadcast over the tile (a vector mask: the interpreter takes no
        # scalar-and-vector masks).
        pos = tl.load(slot_pos_ptr + token * top_k + k) + tl.zeros((BLOCK_N,), dtype=tl.int32)
        real = pos >= 0
        safe = tl.where(real, pos, 0).to(tl.int64)
        acc += tl.load(rows_ptr + safe * stride_r + cols, mask=col_ok & real, other=0.0).to(
            tl.float32
        )
    tl.store(out_ptr + token.to(tl.int64) * stride_o + cols, acc, mask=col_ok)


def combine_real_rows(
    rows: torch.Tensor, slot_pos: torch.Tensor, tokens: int, top_k: int, dtype: torch.dtype
) -> torch.Tensor:
    """``[T, H]`` sums of each token's real-pick rows (``rows`` indexed by sorted position;
    rows of padding or of no pick may hold anything: they are not read)."""
    n_cols = rows.shape[1]
    out = torch.empty(tokens, n_cols, dtype=dtype, device=rows.device)
    if tokens == 0:
        return out
    block_n = min(1024, triton.next_power_of_2(n_cols))
    _combine_kernel[(tokens, triton.cdiv(n_cols, block_n))](
        rows, slot_pos, out, top_k, n_cols, rows.stride(0), out.stride(0), BLOCK_N=block_n
    )
    return out


@triton.jit
def _expert_block(block_expert_ptr, sorted_ptr, num_slots, BLOCK_M: tl.constexpr):
    """This program's block of sorted positions: its expert, the positions, which of them
    hold a real slot, and the slots (0 where none)."""
    pid_m = tl.program_id(0)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slots = tl.load(sorted_ptr + rows)
    valid = slots < num_slots
    return tl.load(block_expert_ptr + pid_m), rows, valid, tl.where(valid, slots, 0)


@triton.jit
def _row_tile(ptr, rows, stride, cols, mask):
    """``ptr[rows, cols]`` of a row-major matrix with rows of ``stride`` elements; 0 outside
    ``mask``."""
    return tl.load(ptr + rows[:, None].to(tl.int64) * stride + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _mma(acc, a, b, IEEE: tl.constexpr):
    """``acc + a @ b``; IEEE: exact fp32 products (fp32 inputs), else the default (TF32)."""
    if IEEE:
        acc += tl.dot(a, b, input_precision="ieee")
    else:
        acc += tl.dot(a, b)
    return acc


@triton.jit
def _gate_up_kernel(
    x_ptr,
    w_ptr,
    sorted_ptr,
    block_expert_ptr,
    act_ptr,
    num_slots,
    top_k,
    hidden,
    inter,
    num_real,
    stride_xt,
    stride_we,
    stride_wn,
    stride_ap,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    expert, rows, valid, safe_slots = _expert_block(
        block_expert_ptr, sorted_ptr, num_slots, BLOCK_M
    )
    if expert >= num_real:
        return
    tokens = safe_slots // top_k
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < inter
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    for k0 in range(0, hidden, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < hidden
        a = _row_tile(x_ptr, tokens, stride_xt, ks, valid[:, None] & k_ok[None, :])
        w_mask = k_ok[:, None] & col_ok[None, :]
        w_gate = tl.load(w_base + cols[None, :] * stride_wn + ks[:, None], mask=w_mask, other=0.0)
        w_up = tl.load(
            w_base + (cols[None, :] + inter) * stride_wn + ks[:, None], mask=w_mask, other=0.0
        )
        if UPCAST:
            a, w_gate, w_up = a.to(tl.float32), w_gate.to(tl.float32), w_up.to(tl.float32)
        acc_gate = _mma(acc_gate, a, w_gate, IEEE)
        acc_up = _mma(acc_up, a, w_up, IEEE)
    act = acc_gate * tl.sigmoid(acc_gate) * acc_up
    tl.store(
        act_ptr + rows[:, None].to(tl.int64) * stride_ap + cols[None, :],
        act.to(act_ptr.dtype.element_ty),
        mask=valid[:, None] & col_ok[None, :],
    )


@triton.jit
def _rows_times_expert_kernel(
    a_ptr,
    w_ptr,
    sorted_ptr,
    block_expert_ptr,
    weights_ptr,
    out_ptr,
    num_slots,
    top_k,
    n_cols,
    k_dim,
    num_real,
    stride_ap,
    stride_we,
    stride_wk,
    stride_wn,
    stride_o,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    SCALE: tl.constexpr,
    ATOMIC: tl.constexpr,
):
    """Per block of one expert: rows ``a[p]`` (by sorted position) times the expert's
    matrix ``W[e][k, n]`` (any strides), optionally scaled by the slot's routing weight.
    The result goes to row ``p`` of ``out`` (for ``combine_real_rows``), or with ATOMIC is
    added into the slot's token row (fp32, order not fixed). The forward's down projection
    (``act W_d^T``, scaled) and the backward's input gradient (``[dg, du] W_gu``) are this
    kernel."""
    expert, rows, valid, safe_slots = _expert_block(
        block_expert_ptr, sorted_ptr, num_slots, BLOCK_M
    )
    if expert >= num_real:
        return
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    for k0 in range(0, k_dim, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_dim
        a = _row_tile(a_ptr, rows, stride_ap, ks, valid[:, None] & k_ok[None, :])
        w = tl.load(
            w_base + ks[:, None] * stride_wk + cols[None, :] * stride_wn,
            mask=k_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        if UPCAST:
            a = a.to(tl.float32)
        w = w.to(a.dtype)  # fp32 rows (gradients) meet 16-bit weights in fp32
        acc = _mma(acc, a, w, IEEE)
    if SCALE:
        gate_weight = tl.load(weights_ptr + safe_slots, mask=valid, other=0.0)
        acc = acc * gate_weight.to(tl.float32)[:, None]
    out_mask = valid[:, None] & col_ok[None, :]
    if ATOMIC:
        token_rows = (safe_slots // top_k)[:, None].to(tl.int64)
        tl.atomic_add(out_ptr + token_rows * stride_o + cols[None, :], acc, mask=out_mask)
    else:
        row_off = rows[:, None].to(tl.int64) * stride_o
        tl.store(out_ptr + row_off + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _bwd_rows_kernel(
    x_ptr,
    dout_ptr,
    wgu_ptr,
    wd_ptr,
    sorted_ptr,
    block_expert_ptr,
    weights_ptr,
    dgu_ptr,
    wact_ptr,
    dweight_ptr,
    num_slots,
    top_k,
    hidden,
    inter,
    num_real,
    stride_xt,
    stride_dt,
    stride_gue,
    stride_gun,
    stride_de,
    stride_dh,
    stride_dgu,
    stride_wact,
    stride_dw,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Per block of one expert and an I tile: recompute g, u; d_act = dO W_d; the routing
    weight's gradient (one partial per I tile); dg, du; and w * act for dW_d."""
    pid_n = tl.program_id(1)
    expert, rows, valid, safe_slots = _expert_block(
        block_expert_ptr, sorted_ptr, num_slots, BLOCK_M
    )
    if expert >= num_real:
        return
    tokens = safe_slots // top_k
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < inter
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_da = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    gu_base = wgu_ptr + expert.to(tl.int64) * stride_gue
    d_base = wd_ptr + expert.to(tl.int64) * stride_de
    for k0 in range(0, hidden, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < hidden
        row_mask = valid[:, None] & k_ok[None, :]
        w_mask = k_ok[:, None] & col_ok[None, :]
        x = _row_tile(x_ptr, tokens, stride_xt, ks, row_mask).to(tl.float32)
        do = _row_tile(dout_ptr, tokens, stride_dt, ks, row_mask).to(tl.float32)
        wg = tl.load(gu_base + cols[None, :] * stride_gun + ks[:, None], mask=w_mask, other=0.0).to(
            tl.float32
        )
        wu = tl.load(
            gu_base + (cols[None, :] + inter) * stride_gun + ks[:, None], mask=w_mask, other=0.0
        ).to(tl.float32)
        wd = tl.load(d_base + ks[:, None] * stride_dh + cols[None, :], mask=w_mask, other=0.0).to(
            tl.float32
        )
        acc_g = _mma(acc_g, x, wg, IEEE)
        acc_u = _mma(acc_u, x, wu, IEEE)
        acc_da = _mma(acc_da, do, wd, IEEE)
    sig = tl.sigmoid(acc_g)
    silu = acc_g * sig
    act = silu * acc_u
    gate_weight = tl.load(weights_ptr + safe_slots, mask=valid, other=0.0).to(tl.float32)
    # d(weight) = dO . y = sum_i (dO W_d)_i act_i: this tile's share.
    tl.store(dweight_ptr + safe_slots * stride_dw + pid_n, tl.sum(acc_da * act, axis=1), mask=valid)
    da = acc_da * gate_weight[:, None]
    dg = da * acc_u * sig * (1.0 + acc_g * (1.0 - sig))
    du = da * silu
    out_mask = valid[:, None] & col_ok[None, :]
    row_off = rows[:, None].to(tl.int64)
    tl.store(dgu_ptr + row_off * stride_dgu + cols[None, :], dg, mask=out_mask)
    tl.store(dgu_ptr + row_off * stride_dgu + inter + cols[None, :], du, mask=out_mask)
    tl.store(
        wact_ptr + row_off * stride_wact + cols[None, :], act * gate_weight[:, None], mask=out_mask
    )


@triton.jit
def _bwd_expert_weight_kernel(
    left_ptr,
    right_ptr,
    sorted_ptr,
    starts_ptr,
    counts_ptr,
    out_ptr,
    num_slots,
    top_k,
    left_cols,
    right_cols,
    stride_left,
    stride_right,
    stride_oe,
    stride_or,
    LEFT_BY_TOKEN: tl.constexpr,
    RIGHT_BY_TOKEN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
):
    """An expert's weight gradient, sum over its real rows of left[row]^T right[row]
    (a row is a slot's position; *_BY_TOKEN reads the slot's token row instead):
    dW_d = dO^T (w act), dW_gu = [dg; du]^T x."""
    expert = tl.program_id(0)
    start = tl.load(starts_ptr + expert)
    count = tl.load(counts_ptr + expert)
    ns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for r0 in range(0, count, BLOCK_M):
        offs = r0 + tl.arange(0, BLOCK_M)
        ok = offs < count
        rows = start + offs
        slots = tl.load(sorted_ptr + rows, mask=ok, other=0)
        tokens = slots // top_k
        left_rows = tokens if LEFT_BY_TOKEN else rows
        right_rows = tokens if RIGHT_BY_TOKEN else rows
        left_mask = ok[:, None] & (ns[None, :] < left_cols)
        right_mask = ok[:, None] & (ks[None, :] < right_cols)
        left = _row_tile(left_ptr, left_rows, stride_left, ns, left_mask).to(tl.float32)
        right = _row_tile(right_ptr, right_rows, stride_right, ks, right_mask).to(tl.float32)
        acc = _mma(acc, tl.trans(left), right, IEEE)
    tl.store(
        out_ptr + expert.to(tl.int64) * stride_oe + ns[:, None] * stride_or + ks[None, :],
        acc,
        mask=(ns[:, None] < left_cols) & (ks[None, :] < right_cols),
    )


def fused_experts_backward(
    grad_out: torch.Tensor, call: ExpertsCall, *, blocks: tuple[int, int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(d hidden, d topk_weights, d gate_up_proj, d down_proj)`` of
    ``fused_experts_forward``, on the same real-slot grouping (zero picks get none)."""
    hidden, topk_ids, topk_weights, gate_up_proj, down_proj, _ = call
    tokens, top_k = topk_ids.shape
    num_real, two_inter, size = gate_up_proj.shape
    inter = two_inter // 2
    dev = hidden.device
    block_m, block_n, block_k = blocks or default_blocks(tokens * top_k, hidden.dtype)
    hidden, grad_out = hidden.contiguous(), grad_out.contiguous()
    gate_up_proj, down_proj = gate_up_proj.contiguous(), down_proj.contiguous()
    weights = topk_weights.reshape(-1).contiguous()
    layout = align_real_slots(topk_ids, num_real, block_m)
    sorted_slots, block_expert, counts, starts = layout[:4]
    num_slots = tokens * top_k
    rows = sorted_slots.numel()
    ieee = hidden.dtype == torch.float32
    n_tiles = triton.cdiv(inter, block_n)
    dgu = torch.zeros(rows, two_inter, dtype=torch.float32, device=dev)
    wact = torch.zeros(rows, inter, dtype=torch.float32, device=dev)
    dweight_parts = torch.zeros(num_slots, n_tiles, dtype=torch.float32, device=dev)
    n_blocks = used_blocks_bound(block_expert.numel(), num_slots)
    _bwd_rows_kernel[(n_blocks, n_tiles)](
        hidden, grad_out, gate_up_proj, down_proj, sorted_slots, block_expert, weights,
        dgu, wact, dweight_parts, num_slots, top_k, size, inter, num_real,
        hidden.stride(0), grad_out.stride(0), gate_up_proj.stride(0), gate_up_proj.stride(1),
        down_proj.stride(0), down_proj.stride(1), dgu.stride(0), wact.stride(0),
        dweight_parts.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, IEEE=ieee,
    )  # fmt: skip
    d_down = torch.zeros(num_real, size, inter, dtype=torch.float32, device=dev)
    _bwd_expert_weight_kernel[(num_real, triton.cdiv(size, block_n), triton.cdiv(inter, block_n))](
        grad_out, wact, sorted_slots, starts, counts, d_down, num_slots, top_k, size, inter,
        grad_out.stride(0), wact.stride(0), d_down.stride(0), d_down.stride(1),
        LEFT_BY_TOKEN=True, RIGHT_BY_TOKEN=False,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_n, IEEE=ieee,
    )  # fmt: skip
    d_gate_up = torch.zeros(num_real, two_inter, size, dtype=torch.float32, device=dev)
    _bwd_expert_weight_kernel[
        (num_real, triton.cdiv(two_inter, block_n), triton.cdiv(size, block_n))
    ](
        dgu, hidden, sorted_slots, starts, counts, d_gate_up, num_slots, top_k, two_inter, size,
        dgu.stride(0), hidden.stride(0), d_gate_up.stride(0), d_gate_up.stride(1),
        LEFT_BY_TOKEN=False, RIGHT_BY_TOKEN=True,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_n, IEEE=ieee,
    )  # fmt: skip
    # One input-gradient row per real pick, summed per token in k order (deterministic).
    dx_rows = torch.empty(rows, size, dtype=torch.float32, device=dev)
    _rows_times_expert_kernel[(n_blocks, triton.cdiv(size, block_n))](
        dgu, gate_up_proj, sorted_slots, block_expert, weights, dx_rows, num_slots, top_k, size,
        two_inter, num_real, dgu.stride(0), gate_up_proj.stride(0), gate_up_proj.stride(1), 1,
        dx_rows.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, IEEE=ieee, UPCAST=False, SCALE=False,
        ATOMIC=False,
    )  # fmt: skip
    d_hidden = combine_real_rows(dx_rows, layout.slot_pos, tokens, top_k, hidden.dtype)
    d_weights = dweight_parts.sum(1).view(tokens, top_k).to(topk_weights.dtype)
    return (
        d_hidden,
        d_weights,
        d_gate_up.to(gate_up_proj.dtype),
        d_down.to(down_proj.dtype),
    )


def used_blocks_bound(capacity_blocks: int, num_slots: int) -> int:
    """Programs to launch along the block axis. Used blocks come first and each holds at
    least one real slot, so there are at most ``num_slots`` of them: a decode step (T*K
    small) launches about one program per touched expert, each reading its weights once,
    instead of one per expert. Depends on shapes only (CUDA-graph safe)."""
    return max(1, min(capacity_blocks, num_slots))


# The forward GEMMs' autotune space (BLOCK_M is set by the token count and dtype: see
# ``default_blocks``).
TILE_CONFIGS = [
    triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=warps, num_stages=stages)
    for n in (64, 128)
    for k in (32, 64, 128)
    for warps in (4, 8)
    for stages in (2, 3)
]


# The GPU the autotuner prunes for: the current device's, or a named target while the
# ahead-of-time compile check (zeda_kernels.aot) records launches for it without a GPU.
_target_capability: int | None = None


@contextlib.contextmanager
def tile_target(capability: int) -> Iterator[None]:
    """Prune tile configs for compute capability ``capability`` (e.g. 90) inside the block."""
    global _target_capability
    saved, _target_capability = _target_capability, capability
    try:
        yield
    finally:
        _target_capability = saved


def _capability(tensor: torch.Tensor) -> int:
    if _target_capability is not None:
        return _target_capability
    major, minor = torch.cuda.get_device_capability(tensor.device)
    return 10 * major + minor


def prune_tile_configs(
    configs: list, named_args: dict, *, weight_tiles: int, atomic: bool, **launch: object
) -> list:
    """The configs of ``configs`` that fit the target GPU at this launch's BLOCK_M and dtype
    (Triton's ``early_config_prune``). Two estimates, their limits fitted to the
    ahead-of-time compile report of every config (docs/benchmarks.md) and checked by it in
    CI for sm_90 and sm_80 (tests/test_aot.py):

    - shared memory: the pipelined operand buffers, one row tile (BLOCK_M x BLOCK_K) and
      ``weight_tiles`` weight tiles (BLOCK_K x BLOCK_N) each, at the operand width: as many
      buffers as stages where Hopper's ``wgmma`` reads 16-bit operands from shared memory,
      one fewer otherwise; at least the fp32 epilogue tile. Within the per-block limit
      (gate/up at M64 N128 K128, 3 stages: 240 KiB > 227 KiB on sm_90).
    - registers: the fp32 accumulator values per thread (x3 for the atomic epilogue, which
      also holds a 64-bit address per value), plus the operand values per thread where
      they live in registers (Ampere's ``mma.sync`` fragments; the fp32 FMA path), within a
      per-architecture budget: past it ptxas spills.
    """
    from zeda_kernels.gpu_arch import ARCHS

    weights = named_args["w_ptr"]
    capability = _capability(weights)
    # The newest architecture the limits are known for at or below the target's (the
    # smallest known one for older GPUs).
    arch = ARCHS[max((c for c in ARCHS if c <= capability), default=min(ARCHS))]
    operand_bytes = weights.element_size()
    tensor_cores = operand_bytes == 2  # fp32 takes the IEEE FMA path
    wgmma = tensor_cores and capability >= 90
    block_m = int(launch["BLOCK_M"])
    kept = []
    for config in configs:
        n, k, warps, stages = (
            config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"], config.num_warps,
            config.num_stages,
        )  # fmt: skip
        stage_bytes = (block_m * k + weight_tiles * k * n) * operand_bytes
        buffers = stages if wgmma else stages - 1
        shared = max(buffers * stage_bytes, block_m * n * 4)
        threads = 32 * warps
        live = weight_tiles * block_m * n / threads * (3 if atomic else 1)
        if not wgmma:
            live += (block_m * k + weight_tiles * k * n) / threads * operand_bytes / 4
        if wgmma:
            fits = live <= 192
        elif tensor_cores:
            fits = live <= 168
        else:  # the FMA path spills erratically past small tiles and with deeper pipelines
            fits = live <= 44 and stages == 2
        if fits and shared <= arch.smem_per_block:
            kept.append(config)
    # Never prune everything: the smallest tile is always a candidate.
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])]


def _tuned(weight_tiles: int, atomic: bool, key: list[str], **kwargs):
    prune = functools.partial(prune_tile_configs, weight_tiles=weight_tiles, atomic=atomic)
    return triton.autotune(
        TILE_CONFIGS, key=key, prune_configs_by={"early_config_prune": prune}, **kwargs
    )


# The forward GEMMs with their tiles tuned per shape and BLOCK_M (compiled kernels only: the
# tuner times on the GPU). Both write, never accumulate, so tuning runs leave the right
# result; the atomic down projection adds into its output, which the tuner restores after
# each trial.
if _INTERPRETED:
    _gate_up_tuned = _down_tuned = _down_atomic_tuned = None
else:
    _gate_up_tuned = _tuned(2, False, ["hidden", "inter", "BLOCK_M"])(_gate_up_kernel)
    _down_tuned = _tuned(1, False, ["n_cols", "k_dim", "BLOCK_M"])(_rows_times_expert_kernel)
    _down_atomic_tuned = _tuned(1, True, ["n_cols", "k_dim", "BLOCK_M"], restore_value=["out_ptr"])(
        _rows_times_expert_kernel
    )


def default_blocks(tokens_x_k: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): small M for decode-sized batches (fewer padding rows per
    touched expert), larger for prefill. fp32 keeps M at 16: its FMA path holds the operand
    tiles in registers, and every M64 tile of the tuning space spills on sm_80 (the compile
    report in docs/benchmarks.md)."""
    block_m = 16 if tokens_x_k <= 1024 or dtype == torch.float32 else 64
    return block_m, 64, 32


def fused_experts_forward(
    call: ExpertsCall,
    *,
    blocks: tuple[int, int, int] | None = None,
    deterministic: bool = True,
) -> torch.Tensor:
    """Weighted sum of each token's real experts (SiLU-gated), zero picks never computed.

    Shapes as ``grouped_experts_forward``: hidden ``[T, H]``, topk ``[T, K]``, gate_up_proj
    ``[N, 2I, H]`` ([gate; up] rows), down_proj ``[N, H, I]``. Accumulates in fp32 and
    returns ``hidden.dtype``. ``deterministic=False`` adds the down projection atomically
    into the output instead of combining per-pick rows (no row buffer; summation order, and
    so the last bits, vary from run to run).
    """
    hidden, topk_ids, topk_weights, gate_up_proj, down_proj, num_real_experts = call
    tokens, top_k = topk_ids.shape
    num_real, two_inter, size = gate_up_proj.shape
    inter = two_inter // 2
    if num_real != num_real_experts or down_proj.shape != (num_real, size, inter):
        raise ValueError(
            f"expert weights {tuple(gate_up_proj.shape)} / {tuple(down_proj.shape)} do not "
            f"match num_real_experts={num_real_experts}"
        )
    if tokens == 0:
        return torch.zeros_like(hidden)
    block_m, block_n, block_k = blocks or default_blocks(tokens * top_k, hidden.dtype)
    hidden = hidden.contiguous()
    gate_up_proj, down_proj = gate_up_proj.contiguous(), down_proj.contiguous()
    weights = topk_weights.reshape(-1).contiguous()
    layout = align_real_slots(topk_ids, num_real, block_m)
    sorted_slots, block_expert = layout.sorted_slots, layout.block_expert
    num_slots = tokens * top_k
    act = torch.empty(sorted_slots.numel(), inter, dtype=hidden.dtype, device=hidden.device)
    ieee = hidden.dtype == torch.float32
    # Triton's CPU interpreter multiplies bf16 tiles as raw bits (measured error 2e10):
    # there, 16-bit operands are widened to fp32 first. Compiled kernels keep them.
    upcast = _INTERPRETED and hidden.dtype != torch.float32
    # Tiles: autotuned per (hidden, inter) on a GPU, fixed under the interpreter or when given.
    tuned = blocks is None and not _INTERPRETED
    tiles = {} if tuned else {"BLOCK_N": block_n, "BLOCK_K": block_k}
    gate_up = _gate_up_tuned if tuned else _gate_up_kernel
    if not tuned:
        down = _rows_times_expert_kernel
    else:
        down = _down_tuned if deterministic else _down_atomic_tuned
    n_blocks = used_blocks_bound(block_expert.numel(), num_slots)

    def grid_over(columns):
        return lambda meta: (n_blocks, triton.cdiv(columns, meta["BLOCK_N"]))

    gate_up[grid_over(inter)](
        hidden,
        gate_up_proj,
        sorted_slots,
        block_expert,
        act,
        num_slots,
        top_k,
        size,
        inter,
        num_real,
        hidden.stride(0),
        gate_up_proj.stride(0),
        gate_up_proj.stride(1),
        act.stride(0),
        BLOCK_M=block_m,
        IEEE=ieee,
        UPCAST=upcast,
        **tiles,
    )
    if deterministic:
        # One fp32 row per real pick (no row exists for a zero pick), summed per token in
        # k order by the combine: the same bits for the same routes at any batch layout.
        out = torch.empty(sorted_slots.numel(), size, dtype=torch.float32, device=hidden.device)
    else:
        out = torch.zeros(tokens, size, dtype=torch.float32, device=hidden.device)
    down[grid_over(size)](
        act,
        down_proj,
        sorted_slots,
        block_expert,
        weights,
        out,
        num_slots,
        top_k,
        size,
        inter,
        num_real,
        act.stride(0),
        down_proj.stride(0),
        1,  # W_d[e] is [H, I]: k (= i) is contiguous, n (= h) strides by a row
        down_proj.stride(1),
        out.stride(0),
        BLOCK_M=block_m,
        IEEE=ieee,
        UPCAST=upcast,
        SCALE=True,
        ATOMIC=not deterministic,
        **tiles,
    )
    if deterministic:
        return combine_real_rows(out, layout.slot_pos, tokens, top_k, hidden.dtype)
    return out.to(hidden.dtype)


class _FusedExperts(torch.autograd.Function):
    """Triton forward and backward on the same real-slot grouping (the backward recomputes
    the gate/up activations instead of keeping them)."""

    @staticmethod
    def forward(ctx, hidden, topk_ids, slot_weights, gate_up_proj, down_proj, num_real):
        ctx.save_for_backward(hidden, topk_ids, slot_weights, gate_up_proj, down_proj)
        ctx.num_real = num_real
        weights = slot_weights.view(topk_ids.shape)
        return fused_experts_forward(
            ExpertsCall(hidden, topk_ids, weights, gate_up_proj, down_proj, num_real)
        )

    @staticmethod
    def backward(ctx, grad_out):
        hidden, topk_ids, slot_weights, gate_up_proj, down_proj = ctx.saved_tensors
        weights = slot_weights.view(topk_ids.shape)
        d_hidden, d_weights, d_gate_up, d_down = fused_experts_backward(
            grad_out, ExpertsCall(hidden, topk_ids, weights, gate_up_proj, down_proj, ctx.num_real)
        )
        return d_hidden, None, d_weights.reshape(-1), d_gate_up, d_down, None


def fused_experts(call: ExpertsCall) -> torch.Tensor:
    """``EXPERT_BACKENDS["triton"]``: differentiable, SiLU-gated experts only (the
    dispatcher checks the activation)."""
    hidden, topk_ids, topk_weights, gate_up_proj, down_proj, num_real = call
    return _FusedExperts.apply(
        hidden, topk_ids, topk_weights.reshape(-1), gate_up_proj, down_proj, num_real
    )
