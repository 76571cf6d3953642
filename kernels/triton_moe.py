"""Fused MoE in Triton that never touches a zero-expert pick (forward; backward reuses the
same grouping through the torch path).

Dataflow::

    topk_ids [T, K] --align_real_slots--> sorted_slots [P]   flat slots t*K+k grouped by real
                                          block_expert [P/BM] expert, each group padded to a
                                                               multiple of BLOCK_M; zero picks
                                                               are left out, not padded
    gate_up_kernel:  act[p]  = SiLU(x[t] W_g[e]^T) * (x[t] W_u[e]^T)   per block of one expert
    down_kernel:     y[slot] = w[slot] * act[p] W_d[e]^T              (per-slot rows)
    out[t] = sum over the token's real slots y[t*K+k]        fixed order: deterministic;
                                                             all-zero tokens stay exactly 0

Buffers have fixed sizes (``P = T*K + N*(BLOCK_M-1)`` rows at most) and the launch grids
depend only on shapes, so a call can be captured in a CUDA graph; blocks past the used
length, or of no expert, exit at once. Without a GPU the same kernels run under
``TRITON_INTERPRET=1`` (for tests on small shapes).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from zeda_kernels.moe_dispatch import _torch_grouped

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
    ids_ptr, starts_ptr, cursor_ptr, sorted_ptr, num_slots, num_real, BLOCK: tl.constexpr
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < num_slots
    ids = tl.load(ids_ptr + offs, mask=inside, other=0)
    real = inside & (ids < num_real)
    rank = tl.atomic_add(cursor_ptr + ids, 1, mask=real)
    start = tl.load(starts_ptr + ids, mask=real, other=0)
    tl.store(sorted_ptr + start + rank, offs, mask=real)


def align_real_slots(topk_ids: torch.Tensor, num_real: int, block_m: int):
    """Group the real slots of ``topk_ids`` by expert, padded per expert to ``block_m``.

    Returns ``(sorted_slots [P], block_expert [P // block_m], counts [N])``: flat slot
    indices (``num_slots`` marks padding), the expert of every block (``num_real`` for a
    block past the used length), and the real picks per expert.
    """
    tokens, top_k = topk_ids.shape
    num_slots = tokens * top_k
    device = topk_ids.device
    ids = topk_ids.reshape(-1).to(torch.int32).contiguous()
    capacity = num_slots + num_real * (block_m - 1)
    capacity = triton.cdiv(capacity, block_m) * block_m
    counts = torch.zeros(num_real, dtype=torch.int32, device=device)
    block = 256
    grid = (max(1, triton.cdiv(num_slots, block)),)
    _count_kernel[grid](ids, counts, num_slots, num_real, BLOCK=block)
    padded = (counts + block_m - 1) // block_m * block_m
    ends = torch.cumsum(padded, 0, dtype=torch.int32)
    starts = (ends - padded).contiguous()
    sorted_slots = torch.full((capacity,), num_slots, dtype=torch.int32, device=device)
    cursor = torch.zeros(num_real, dtype=torch.int32, device=device)
    _scatter_kernel[grid](ids, starts, cursor, sorted_slots, num_slots, num_real, BLOCK=block)
    block_starts = torch.arange(0, capacity, block_m, device=device, dtype=torch.int32)
    # The expert whose padded range holds each block; num_real past the used length.
    block_expert = torch.searchsorted(ends, block_starts, right=True).to(torch.int32)
    return sorted_slots, block_expert, counts


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
    pid_m = tl.program_id(0)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert >= num_real:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slots = tl.load(sorted_ptr + rows)
    valid = slots < num_slots
    tokens = tl.where(valid, slots // top_k, 0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < inter
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    for k0 in range(0, hidden, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < hidden
        a = tl.load(
            x_ptr + tokens[:, None].to(tl.int64) * stride_xt + ks[None, :],
            mask=valid[:, None] & k_ok[None, :],
            other=0.0,
        )
        w_mask = k_ok[:, None] & col_ok[None, :]
        w_gate = tl.load(w_base + cols[None, :] * stride_wn + ks[:, None], mask=w_mask, other=0.0)
        w_up = tl.load(
            w_base + (cols[None, :] + inter) * stride_wn + ks[:, None], mask=w_mask, other=0.0
        )
        if UPCAST:
            a, w_gate, w_up = a.to(tl.float32), w_gate.to(tl.float32), w_up.to(tl.float32)
        if IEEE:
            acc_gate += tl.dot(a, w_gate, input_precision="ieee")
            acc_up += tl.dot(a, w_up, input_precision="ieee")
        else:
            acc_gate += tl.dot(a, w_gate)
            acc_up += tl.dot(a, w_up)
    act = acc_gate * tl.sigmoid(acc_gate) * acc_up
    tl.store(
        act_ptr + rows[:, None].to(tl.int64) * stride_ap + cols[None, :],
        act.to(act_ptr.dtype.element_ty),
        mask=valid[:, None] & col_ok[None, :],
    )


@triton.jit
def _down_kernel(
    act_ptr,
    w_ptr,
    sorted_ptr,
    block_expert_ptr,
    weights_ptr,
    out_ptr,
    num_slots,
    hidden,
    inter,
    num_real,
    stride_ap,
    stride_we,
    stride_wh,
    stride_os,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert >= num_real:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slots = tl.load(sorted_ptr + rows)
    valid = slots < num_slots
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < hidden
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    for k0 in range(0, inter, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < inter
        a = tl.load(
            act_ptr + rows[:, None].to(tl.int64) * stride_ap + ks[None, :],
            mask=valid[:, None] & k_ok[None, :],
            other=0.0,
        )
        w = tl.load(
            w_base + cols[None, :] * stride_wh + ks[:, None],
            mask=k_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        if UPCAST:
            a, w = a.to(tl.float32), w.to(tl.float32)
        if IEEE:
            acc += tl.dot(a, w, input_precision="ieee")
        else:
            acc += tl.dot(a, w)
    gate_weight = tl.load(weights_ptr + tl.where(valid, slots, 0), mask=valid, other=0.0)
    acc = acc * gate_weight.to(tl.float32)[:, None]
    tl.store(
        out_ptr + tl.where(valid, slots, 0)[:, None].to(tl.int64) * stride_os + cols[None, :],
        acc,
        mask=valid[:, None] & col_ok[None, :],
    )


def _blocks(tokens_x_k: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): small M for decode-sized batches (fewer padding rows per
    touched expert), larger for prefill."""
    block_m = 16 if tokens_x_k <= 1024 else 64
    return block_m, 64, 32


def fused_experts_forward(
    hidden: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    *,
    num_real_experts: int,
    blocks: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Weighted sum of each token's real experts (SiLU-gated), zero picks never computed.

    Shapes as ``grouped_experts_forward``: hidden ``[T, H]``, topk ``[T, K]``, gate_up_proj
    ``[N, 2I, H]`` ([gate; up] rows), down_proj ``[N, H, I]``. Accumulates in fp32 and
    returns ``hidden.dtype``.
    """
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
    block_m, block_n, block_k = blocks or _blocks(tokens * top_k)
    hidden = hidden.contiguous()
    gate_up_proj, down_proj = gate_up_proj.contiguous(), down_proj.contiguous()
    weights = topk_weights.reshape(-1).contiguous()
    sorted_slots, block_expert, _ = align_real_slots(topk_ids, num_real, block_m)
    num_slots = tokens * top_k
    act = torch.empty(sorted_slots.numel(), inter, dtype=hidden.dtype, device=hidden.device)
    ieee = hidden.dtype == torch.float32
    # Triton's CPU interpreter multiplies bf16 tiles as raw bits (measured error 2e10):
    # there, 16-bit operands are widened to fp32 first. Compiled kernels keep them.
    upcast = _INTERPRETED and hidden.dtype != torch.float32
    grid = (block_expert.numel(), triton.cdiv(inter, block_n))
    _gate_up_kernel[grid](
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
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        IEEE=ieee,
        UPCAST=upcast,
    )
    # Zero picks are never written: their rows stay 0 and add nothing to the sum.
    per_slot = torch.zeros(num_slots, size, dtype=torch.float32, device=hidden.device)
    grid = (block_expert.numel(), triton.cdiv(size, block_n))
    _down_kernel[grid](
        act,
        down_proj,
        sorted_slots,
        block_expert,
        weights,
        per_slot,
        num_slots,
        size,
        inter,
        num_real,
        act.stride(0),
        down_proj.stride(0),
        down_proj.stride(1),
        per_slot.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        IEEE=ieee,
        UPCAST=upcast,
    )
    return per_slot.view(tokens, top_k, size).sum(1).to(hidden.dtype)


class _FusedExperts(torch.autograd.Function):
    """Triton forward; backward through the torch grouped path on the same real slots
    (recomputed: no activation is kept between the two)."""

    @staticmethod
    def forward(ctx, hidden, topk_ids, slot_weights, gate_up_proj, down_proj, num_real):
        ctx.save_for_backward(hidden, topk_ids, slot_weights, gate_up_proj, down_proj)
        ctx.num_real = num_real
        weights = slot_weights.view(topk_ids.shape)
        return fused_experts_forward(
            hidden, topk_ids, weights, gate_up_proj, down_proj, num_real_experts=num_real
        )

    @staticmethod
    def backward(ctx, grad_out):
        from zeda_kernels.moe_dispatch import group_real_slots

        hidden, topk_ids, slot_weights, gate_up_proj, down_proj = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [
                t.detach().requires_grad_(t.requires_grad)
                for t in (hidden, slot_weights, gate_up_proj, down_proj)
            ]
            groups = group_real_slots(topk_ids, ctx.num_real)
            out = _torch_grouped(inputs[0], groups, inputs[1], inputs[2], inputs[3], F.silu)
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad_out, allow_unused=True))
        h, w, gu, d = (next(grads) if t.requires_grad else None for t in inputs)
        return h, None, w, gu, d, None


def fused_experts(
    hidden: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    num_real: int,
    activation,
) -> torch.Tensor:
    """``EXPERT_BACKENDS["triton"]``: differentiable, SiLU-gated experts only."""
    if not _is_silu(activation):
        raise ValueError("the triton experts backend implements SiLU-gated experts only")
    return _FusedExperts.apply(
        hidden, topk_ids, topk_weights.reshape(-1), gate_up_proj, down_proj, num_real
    )


def _is_silu(activation) -> bool:
    return (
        activation is F.silu
        or isinstance(activation, torch.nn.SiLU)
        or (type(activation).__name__ in ("SiLUActivation", "SiLU"))
    )
