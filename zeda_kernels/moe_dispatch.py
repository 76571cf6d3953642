"""Grouped, sorted MoE dispatch in plain torch that leaves zero-expert slots out entirely.

A token picks ``K`` slots; slots whose expert id is ``>= num_real_experts`` belong to
parameter-free zero experts. Only real slots are gathered, sorted by expert and pushed
through that expert's matmuls, so the work done scales with the number of real picks.

Dataflow::

    topk_ids [T, K] --filter ids < N--> real slots [S] --stable sort by expert--> groups
    per expert e: hidden[tokens_e] --SiLU(x W_g) * (x W_u) W_d--> y_e
                  y_e * weight[slots_e] --index_add by token--> out [T, H]
    (tokens whose every pick is a zero expert stay exactly 0)

Autograd runs through it: gradients reach the expert weights, the hidden states and the
routing weights of real slots (which, through the router's renormalisation, also carry
gradient to the zero-expert router rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import torch
import torch.nn.functional as F


class ExpertsCall(NamedTuple):
    """One MoE layer's expert work, as every backend receives it (shapes and meaning as in
    ``grouped_experts_forward``)."""

    hidden: torch.Tensor  # [T, H]
    topk_ids: torch.Tensor  # [T, K]; ids >= num_real_experts are zero experts
    topk_weights: torch.Tensor  # [T, K]
    gate_up_proj: torch.Tensor  # [N, 2I, H]
    down_proj: torch.Tensor  # [N, H, I]
    num_real_experts: int


@dataclass(frozen=True)
class RealSlotGroups:
    """Real-expert slots of a routing decision, grouped by expert.

    ``slot_index`` holds flat (token * K + k) positions sorted by expert id (stable, so the
    token order inside a group is ascending); ``counts[e]`` is how many slots expert ``e``
    received. Zero-expert slots do not appear at all.
    """

    slot_index: torch.Tensor  # [S] long
    token_index: torch.Tensor  # [S] long
    counts: list[int]  # [N] python ints (host copy: the loop below needs them anyway)

    @property
    def num_slots(self) -> int:
        return int(self.slot_index.numel())


def group_real_slots(topk_ids: torch.Tensor, num_real_experts: int) -> RealSlotGroups:
    """Filter out zero-expert slots and sort the remaining slots by expert id."""
    if topk_ids.dim() != 2:
        raise ValueError(f"topk_ids must be [tokens, K], got shape {tuple(topk_ids.shape)}")
    top_k = topk_ids.shape[1]
    flat_ids = topk_ids.reshape(-1)
    real_slots = torch.nonzero(flat_ids < num_real_experts, as_tuple=False).squeeze(1)
    real_ids = flat_ids.index_select(0, real_slots)
    order = torch.argsort(real_ids, stable=True)
    slot_index = real_slots.index_select(0, order)
    counts = torch.bincount(real_ids, minlength=num_real_experts).tolist()
    return RealSlotGroups(slot_index=slot_index, token_index=slot_index // top_k, counts=counts)


def _torch_grouped(
    hidden: torch.Tensor,
    groups: RealSlotGroups,
    slot_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    activation: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    out = torch.zeros_like(hidden)
    if groups.num_slots == 0:
        # Every pick was a zero expert; keep the graph connected so backward still works.
        return out + 0.0 * slot_weights.sum().to(hidden.dtype)
    weights = slot_weights.index_select(0, groups.slot_index).unsqueeze(1)
    start = 0
    for expert, count in enumerate(groups.counts):
        if count == 0:
            continue
        # Gather, compute and scatter one expert's rows at a time: no [S, H] staging
        # buffers, whose page faults cost as much as the matmuls on CPU.
        tokens = groups.token_index[start : start + count]
        gate, up = F.linear(hidden.index_select(0, tokens), gate_up_proj[expert]).chunk(2, dim=-1)
        y = F.linear(activation(gate) * up, down_proj[expert])
        # Routing weights may be fp32 while activations are bf16: multiply in the wider
        # type, accumulate in the activation dtype (transformers' MoE convention).
        out.index_add_(0, tokens, (y * weights[start : start + count]).to(out.dtype))
        start += count
    return out


def _torch_backend(call: ExpertsCall, activation) -> torch.Tensor:
    groups = group_real_slots(call.topk_ids, call.num_real_experts)
    return _torch_grouped(
        call.hidden,
        groups,
        call.topk_weights.reshape(-1),
        call.gate_up_proj,
        call.down_proj,
        activation,
    )


def _triton_backend(call: ExpertsCall, activation) -> torch.Tensor:
    from zeda_kernels.triton_moe import fused_experts

    return fused_experts(call)


def _te_backend(call: ExpertsCall, activation) -> torch.Tensor:
    from zeda_kernels.te_moe import te_experts

    return te_experts(call)


# name -> fn(call, activation); only the torch reference takes an activation other than SiLU.
EXPERT_BACKENDS: dict[str, Callable[[ExpertsCall, Callable], torch.Tensor]] = {
    "torch": _torch_backend,  # the reference: any device, autograd
    "triton": _triton_backend,  # fused Triton kernels (CUDA; TRITON_INTERPRET=1 on CPU)
    "te": _te_backend,  # transformer-engine's permute + GroupedLinear (CUDA, TE >= 2.1)
}

# Picks the backend of CUDA tensors in every process that inherits it (the launcher sets it
# from kernels.experts_backend, so Ray actors and vLLM's engine processes follow). CPU
# tensors keep the torch reference: the other backends are GPU kernels.
BACKEND_ENV = "ZEDA_EXPERTS_BACKEND"


def is_silu(activation) -> bool:
    return (
        activation is F.silu
        or isinstance(activation, torch.nn.SiLU)
        or (type(activation).__name__ in ("SiLUActivation", "SiLU"))
    )


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def backend_unavailable(name: str, cuda: bool) -> str | None:
    """Why backend ``name`` cannot run in this environment (``cuda``: on CUDA tensors), or
    None when it can."""
    import os

    if name == "auto" or name == "torch":
        return None
    if name not in EXPERT_BACKENDS:
        return f"unknown experts backend {name!r}; available: auto, {sorted(EXPERT_BACKENDS)}"
    if name == "triton":
        if not _importable("triton"):
            return "the triton experts backend needs the triton package"
        if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
            return "the triton experts backend needs CUDA (or TRITON_INTERPRET=1, for tests)"
        return None
    if not _importable("transformer_engine"):
        return "the te experts backend needs transformer-engine (pip install zeda-rl[gpu])"
    if not cuda:
        return "the te experts backend needs CUDA"
    return None


def default_backend(hidden: torch.Tensor) -> str:
    """What ``backend="auto"`` runs: the torch reference on CPU; on CUDA
    ``$ZEDA_EXPERTS_BACKEND`` when set, else the fused Triton kernels when Triton is
    installed (transformer-engine's path when only it is)."""
    import os

    if not hidden.is_cuda:
        return "torch"
    chosen = os.environ.get(BACKEND_ENV, "auto")
    if chosen == "auto":
        return _auto_cuda_backend()
    if chosen not in EXPERT_BACKENDS:
        raise ValueError(
            f"{BACKEND_ENV}={chosen!r}: unknown experts backend; available: auto, "
            f"{sorted(EXPERT_BACKENDS)}"
        )
    return chosen


@cache
def _auto_cuda_backend() -> str:
    for name in ("triton", "te"):
        if backend_unavailable(name, cuda=True) is None:
            return name
    return "torch"


def grouped_experts_forward(
    hidden: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    *,
    num_real_experts: int,
    activation: Callable[[torch.Tensor], torch.Tensor] = F.silu,
    backend: str = "auto",
) -> torch.Tensor:
    """Weighted sum of the real experts each token picked; zero-expert picks cost nothing.

    Args:
        hidden: ``[T, H]`` token activations.
        topk_ids: ``[T, K]`` chosen router slots; ids ``>= num_real_experts`` are zero experts.
        topk_weights: ``[T, K]`` gate weights of the chosen slots (zero-slot weights ignored).
        gate_up_proj: ``[N, 2I, H]`` fused gate/up projections (transformers' layout).
        down_proj: ``[N, H, I]`` down projections.
        backend: ``auto`` (see ``default_backend``), ``torch``, ``triton`` or ``te``.
    """
    if gate_up_proj.shape[0] != num_real_experts or down_proj.shape[0] != num_real_experts:
        raise ValueError(
            f"expert weights hold {gate_up_proj.shape[0]}/{down_proj.shape[0]} experts, "
            f"expected num_real_experts={num_real_experts}"
        )
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"shape mismatch: hidden {tuple(hidden.shape)}, topk_ids {tuple(topk_ids.shape)}, "
            f"topk_weights {tuple(topk_weights.shape)}"
        )
    if backend == "auto":
        backend = default_backend(hidden)
    try:
        impl = EXPERT_BACKENDS[backend]
    except KeyError:
        raise ValueError(
            f"unknown experts backend {backend!r}; available: auto, {sorted(EXPERT_BACKENDS)}"
        ) from None
    if backend != "torch" and not is_silu(activation):
        raise ValueError(f"the {backend} experts backend implements SiLU-gated experts only")
    call = ExpertsCall(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, num_real_experts)
    return impl(call, activation)


# Registered at import (a compiler tracing the model must find the op, not its definition).
@torch.library.custom_op("zeda_kernels::grouped_experts", mutates_args=())
def opaque_grouped_experts(
    hidden: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    num_real_experts: int,
) -> torch.Tensor:
    """``grouped_experts_forward`` (SiLU experts, ``auto`` backend) as one custom op, for
    engines that compile the model (vLLM's torch.compile): the compiler sees a tensor of
    ``hidden``'s shape, and the data-dependent grouping inside (how many picks each expert
    got) runs eagerly. Inference only: the op has no autograd."""
    return grouped_experts_forward(
        hidden, topk_ids, topk_weights, gate_up_proj, down_proj, num_real_experts=num_real_experts
    )


@opaque_grouped_experts.register_fake
def _(hidden, topk_ids, topk_weights, gate_up_proj, down_proj, num_real_experts):
    return torch.empty_like(hidden)
