"""The MoE shapes of the models ZEDA targets, shared by the kernel benches, the ahead-of-time
compile check and the roofline model (one place, so they cannot drift apart)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MoeShape:
    name: str
    real_experts: int
    zero_experts: int  # the ZEDA router's zero experts (half the real ones)
    top_k: int
    hidden: int
    inter: int  # each routed expert's intermediate size

    def expert_bytes(self, dtype_bytes: int = 2) -> int:
        """One expert's weights: gate and up (2 x I x H) and down (H x I)."""
        return 3 * self.hidden * self.inter * dtype_bytes

    def flops_per_pick(self) -> int:
        """Forward FLOPs of one real pick: three GEMVs of H x I, 2 FLOPs per MAC."""
        return 6 * self.hidden * self.inter


MOE_SHAPES: dict[str, MoeShape] = {
    # Qwen3-30B-A3B: 128 routed experts, top-8, hidden 2048, expert intermediate 768.
    "qwen3": MoeShape("qwen3", real_experts=128, zero_experts=64, top_k=8, hidden=2048, inter=768),
    # GLM-4.7-Flash: 64 routed experts, top-4 (its shared expert is a dense MLP, not routed).
    "glm": MoeShape("glm", real_experts=64, zero_experts=32, top_k=4, hidden=2048, inter=1536),
}
