"""The MoE shapes of the models ZEDA targets, shared by the kernel benches, the ahead-of-time
compile check and the roofline model (one place, so they cannot drift apart)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


def synthetic_routes(
    tokens: int,
    shape: MoeShape,
    zero_rate: float,
    *,
    skewed: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[tokens, top_k]`` expert ids with exactly ``round(zero_rate x top_k)`` zero picks
    per token (ids ``>= real_experts``); the real picks are distinct per token, uniform over
    the experts or Zipf(1.2)-skewed."""
    zero_picks = round(zero_rate * shape.top_k)
    if not 0 <= zero_picks <= min(shape.top_k, shape.zero_experts):
        raise ValueError(f"zero_rate {zero_rate} gives {zero_picks} zero picks of {shape.top_k}")
    experts = torch.arange(1, shape.real_experts + 1, dtype=torch.float64)
    probs = 1.0 / experts**1.2 if skewed else torch.ones_like(experts)
    real_picks = shape.top_k - zero_picks
    if real_picks:
        real = torch.multinomial(probs.expand(tokens, -1), real_picks, generator=generator)
    else:
        real = torch.empty(tokens, 0, dtype=torch.int64)
    zero_order = torch.rand(tokens, shape.zero_experts, generator=generator).argsort(1)
    zeros = shape.real_experts + zero_order[:, :zero_picks]
    return torch.cat([real, zeros], 1)
