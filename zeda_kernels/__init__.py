"""zeda_kernels: MoE expert compute that skips zero-expert picks.

Every backend implements :func:`zeda_kernels.moe_dispatch.grouped_experts_forward`'s
interface: routing picks with ids >= ``num_real_experts`` are zero experts and never reach
an expert matmul. Backends: ``torch`` (the plain-torch grouped reference, here),
``triton`` (fused kernels, triton_moe.py) and ``te`` (transformer-engine, te_moe.py);
``auto`` picks one per device, ``$ZEDA_EXPERTS_BACKEND`` overrides it.
"""

from zeda_kernels.moe_dispatch import (
    BACKEND_ENV,
    EXPERT_BACKENDS,
    ExpertsCall,
    RealSlotGroups,
    backend_unavailable,
    group_real_slots,
    grouped_experts_forward,
    opaque_grouped_experts,
)

__all__ = [
    "BACKEND_ENV",
    "ExpertsCall",
    "EXPERT_BACKENDS",
    "RealSlotGroups",
    "backend_unavailable",
    "group_real_slots",
    "grouped_experts_forward",
    "opaque_grouped_experts",
]
