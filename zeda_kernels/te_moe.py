"""MoE experts through transformer-engine: ``moe_permute`` drops the zero-expert picks,
``GroupedLinear`` runs the real experts only, ``moe_unpermute`` merges with the gate weights.

Dataflow::

    topk_ids [T, K] --zero picks -> sentinel id N--> moe_permute(num_out_tokens = S real)
        rows [S, H] sorted by expert; the sentinels sort last and are cut off (row map -1)
    GroupedLinear(N gemms, m_splits = real picks per expert):  [S, H] -> [S, 2I]
    SiLU(gate) * up                                               [S, 2I] -> [S, I]
    GroupedLinear(N gemms):                                       [S, I] -> [S, H]
    moe_unpermute(merging probs = topk_weights): out[t] = sum over t's real rows, w * row

Why a sentinel and not -1: TE's index map sorts its keys as signed integers, so -1 picks
land first and a ``num_out_tokens`` cut then drops real rows from the tail (TE issue 2908,
fixed upstream in 2026 only). Ids ``N`` sort after every real expert on every TE version.

The experts' weights stay the model's ``[N, 2I, H]`` / ``[N, H, I]`` parameters:
``GroupedLinear`` reads ``weight{i}`` on every forward and returns a gradient for each, so
binding those names to views of the stacked parameters sends the gradients into them.

Needs CUDA and transformer-engine >= 2.1 (``map_type``); not installable on the CPU
machines, so the CPU tests drive this module through a torch model of TE's documented
semantics (tests/fake_transformer_engine.py) and tests/test_gpu.py runs it for real.
"""

from __future__ import annotations

import inspect
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from zeda_kernels.moe_dispatch import ExpertsCall


@cache
def _te():
    import transformer_engine.pytorch as te

    if "map_type" not in inspect.signature(te.moe_permute).parameters:
        raise RuntimeError(
            "the te experts backend needs transformer-engine >= 2.1 (moe_permute's index map)"
        )
    return te


class _StackedGroupedLinear:
    """A ``te.GroupedLinear`` whose ``weight{i}`` are views of one ``[N, out, in]`` tensor."""

    def __init__(self, num_experts: int, in_features: int, out_features: int, device, dtype):
        te = _te()
        self.module = te.GroupedLinear(
            num_experts,
            in_features,
            out_features,
            bias=False,
            params_dtype=dtype,
            device=device,
        )
        self.num_experts = num_experts
        for i in range(num_experts):
            # Its own parameters would be unused storage; the names become plain attributes.
            delattr(self.module, f"weight{i}")
            setattr(self.module, f"weight{i}", None)
        # Some TE versions look up the module's first parameter on every forward (to decide
        # on FP8 weight caching); an empty one keeps that lookup valid.
        self.module.register_parameter("zeda_anchor", nn.Parameter(torch.empty(0, device=device)))

    def __call__(self, rows: torch.Tensor, weight: torch.Tensor, m_splits: list[int]):
        for i in range(self.num_experts):
            object.__setattr__(self.module, f"weight{i}", weight[i])
        try:
            return self.module(rows, m_splits)
        finally:
            for i in range(self.num_experts):  # keep no reference to this step's weights
                object.__setattr__(self.module, f"weight{i}", None)


@cache
def _grouped_linear(num_experts: int, in_features: int, out_features: int, device, dtype):
    return _StackedGroupedLinear(num_experts, in_features, out_features, device, dtype)


def te_experts(call: ExpertsCall) -> torch.Tensor:
    """``EXPERT_BACKENDS["te"]``: differentiable, SiLU-gated experts only (the dispatcher
    checks the activation); zero picks never reach a GEMM."""
    hidden, topk_ids, topk_weights, gate_up_proj, down_proj, num_real = call
    te = _te()
    real = topk_ids < num_real
    ids = torch.where(real, topk_ids, num_real).to(torch.int32)
    # Real picks per expert (the sentinels land in the dropped last bin): the one host sync.
    m_splits = torch.bincount(ids.reshape(-1), minlength=num_real + 1).tolist()[:num_real]
    num_picks = sum(m_splits)
    if num_picks == 0:
        # TE reads num_out_tokens=0 as "keep all"; with nothing to compute, return zeros that
        # stay connected to the graph (the routing weights get zero gradient).
        return torch.zeros_like(hidden) + 0.0 * topk_weights.sum().to(hidden.dtype)
    rows, row_map = te.moe_permute(
        hidden.contiguous(), ids, num_out_tokens=num_picks, map_type="index"
    )
    _, two_inter, size = gate_up_proj.shape
    dev, dt = hidden.device, hidden.dtype
    gate, up = _grouped_linear(num_real, size, two_inter, dev, dt)(
        rows, gate_up_proj, m_splits
    ).chunk(2, dim=-1)
    act = F.silu(gate) * up
    y = _grouped_linear(num_real, two_inter // 2, size, dev, dt)(act, down_proj, m_splits)
    # Merging weights in fp32 (TE casts others); dropped picks add nothing.
    return te.moe_unpermute(y, row_map, topk_weights.float(), map_type="index")
