"""zeda_kernels: MoE expert compute that skips zero-expert picks.

Imported as ``zeda_kernels`` (the directory is ``kernels/``; a top-level package named
``kernels`` would clash with the PyPI package of that name).

Every backend implements :func:`zeda_kernels.moe_dispatch.grouped_experts_forward`'s
interface: routing picks with ids >= ``num_real_experts`` are zero experts and never reach
an expert matmul. The plain-torch grouped path lives here; fused GPU kernels plug in
behind the same signature.
"""

from zeda_kernels.moe_dispatch import (
    EXPERT_BACKENDS,
    RealSlotGroups,
    group_real_slots,
    grouped_experts_forward,
)

__all__ = ["EXPERT_BACKENDS", "RealSlotGroups", "group_real_slots", "grouped_experts_forward"]
