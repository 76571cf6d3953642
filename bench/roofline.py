"""Roofline model of the fused ZEDA MoE forward (a model, no GPU needed).

    python bench/roofline.py [--model qwen3,glm] [--tokens 1,16,256,4096,16384]
                             [--zero 0,0.25,0.5] [--routing uniform] [--seeds 3]
                             [--devices H100,H200] [--json out.json]

For each shape, token count and zero-pick rate, routes are drawn as bench/moe_kernel.py
draws them (``synthetic_routes``) and grouped as the kernel groups them (the block size of
``triton_moe.default_blocks``, each expert's real picks padded by ``padded_counts``, the launch
bound of ``used_blocks_bound``). Per kernel of the deterministic forward the model counts

- FLOPs on the padded rows the GEMMs really multiply (masked rows still go through
  ``tl.dot``): gate/up ``2 x rows x H x 2I``, down ``2 x rows x I x H``;
- compulsory HBM bytes: each touched expert's weights once (re-reads by the other row
  blocks of the same expert are taken as L2 hits), the gathered input rows and the act
  rows of the real picks, the fp32 per-pick output rows written by the down GEMM and read
  by the combine, the grouping's index arrays and the output;

and takes ``max(FLOPs / peak, bytes / bandwidth)`` per kernel, summed over the kernels.
Launch latency (a few microseconds per kernel, less under CUDA graphs) and the tile
quantisation of the N dimension are left out, so decode-sized rows are optimistic.

``expert0`` is the approach that sends zero slots to expert 0 with weight 0 (vLLM's zero
experts): the same kernels, with every slot a real row. Speed-ups: against the same kernel
at 0 % zero picks, and against ``expert0`` at the same rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from zeda_kernels.gpu_arch import DEVICES, GpuPeaks
from zeda_kernels.model_shapes import MOE_SHAPES, MoeShape, synthetic_routes

BF16 = 2
FP32 = 4
INDEX = 4  # int32 slot / row indices


@dataclass
class KernelCost:
    name: str
    flops: float
    bytes: float

    def seconds(self, device: GpuPeaks) -> float:
        return max(self.flops / device.bf16_flops, self.bytes / device.hbm_bytes_per_s)


class Grouping(NamedTuple):
    """What the kernel's grouping makes of one batch of routes."""

    block_m: int
    capacity_rows: int  # the grouped buffers' rows (align_real_slots)
    real_rows: int  # real picks
    padded_rows: int  # rows the GEMMs multiply: each touched expert's run in whole blocks
    touched: int  # distinct real experts
    launched: int  # programs along the block axis


def group_routes(shape: MoeShape, topk_ids: torch.Tensor) -> Grouping:
    from zeda_kernels import triton_moe

    tokens, top_k = topk_ids.shape
    n, slots = shape.real_experts, tokens * top_k
    block_m = triton_moe.default_blocks(slots, torch.bfloat16)[0]
    flat = topk_ids.reshape(-1)
    counts = torch.bincount(flat[flat < n], minlength=n)
    capacity = triton_moe.capacity_rows(slots, n, block_m)
    return Grouping(
        block_m=block_m,
        capacity_rows=capacity,
        real_rows=int(counts.sum()),
        padded_rows=int(triton_moe.padded_counts(counts, block_m).sum()),
        touched=int((counts > 0).sum()),
        # Programs launched past the used blocks exit at once (one index load each).
        launched=triton_moe.used_blocks_bound(capacity // block_m, slots),
    )


def forward_costs(
    shape: MoeShape, topk_ids: torch.Tensor, grouping: Grouping | None = None
) -> list[KernelCost]:
    """The deterministic fused forward's kernels on these routes (ids >= real_experts are
    zero picks: no row, no FLOP, no weight read)."""
    tokens, top_k = topk_ids.shape
    h, i = shape.hidden, shape.inter
    g = grouping or group_routes(shape, topk_ids)
    slots = tokens * top_k
    return [
        KernelCost(
            "align",
            flops=0.0,
            bytes=slots * 8 + 2 * slots * INDEX + g.capacity_rows * INDEX,
        ),
        KernelCost(
            "gate_up",
            flops=2.0 * g.padded_rows * h * 2 * i,
            bytes=g.touched * 2 * i * h * BF16
            + g.real_rows * (h + i) * BF16
            + g.launched * (g.block_m + 1) * INDEX,
        ),
        KernelCost(
            "down",
            flops=2.0 * g.padded_rows * i * h,
            bytes=g.touched * h * i * BF16 + g.real_rows * (i * BF16 + h * FP32 + INDEX),
        ),
        KernelCost(
            "combine",
            flops=float(g.real_rows * h),
            bytes=g.real_rows * h * FP32 + slots * INDEX + tokens * h * BF16,
        ),
    ]


def zero_slots_to_expert0(shape: MoeShape, topk_ids: torch.Tensor) -> torch.Tensor:
    return torch.where(topk_ids < shape.real_experts, topk_ids, 0)


@dataclass
class RooflineRow:
    model: str
    tokens: int
    zero_rate: float
    routing: str
    device: str
    fused_us: float
    expert0_us: float
    bound: str  # what limits the fused forward's largest kernel: memory or compute
    touched_experts: float
    padded_rows: float
    speedup_vs_0pct: float = 1.0
    speedup_vs_expert0: float = 1.0


def model_rows(
    shape: MoeShape,
    tokens: int,
    rates: list[float],
    routing: str,
    devices: list[str],
    seeds: int,
) -> list[RooflineRow]:
    rows: list[RooflineRow] = []
    for rate in rates:
        per_device: dict[str, list[tuple[float, float, str, int, int]]] = {d: [] for d in devices}
        for seed in range(seeds):
            gen = torch.Generator().manual_seed(seed)
            ids = synthetic_routes(tokens, shape, rate, skewed=routing == "skewed", generator=gen)
            grouping = group_routes(shape, ids)
            fused = forward_costs(shape, ids, grouping)
            expert0 = forward_costs(shape, zero_slots_to_expert0(shape, ids))
            touched, padded = grouping.touched, grouping.padded_rows
            for name in devices:
                device = DEVICES[name]
                biggest = max(fused, key=lambda c: c.seconds(device))
                memory = biggest.bytes / device.hbm_bytes_per_s
                bound = "memory" if memory >= biggest.flops / device.bf16_flops else "compute"
                per_device[name].append(
                    (
                        sum(c.seconds(device) for c in fused),
                        sum(c.seconds(device) for c in expert0),
                        bound,
                        touched,
                        padded,
                    )
                )
        for name, samples in per_device.items():
            rows.append(
                RooflineRow(
                    model=shape.name,
                    tokens=tokens,
                    zero_rate=rate,
                    routing=routing,
                    device=name,
                    fused_us=statistics.mean(s[0] for s in samples) * 1e6,
                    expert0_us=statistics.mean(s[1] for s in samples) * 1e6,
                    bound=statistics.mode(s[2] for s in samples),
                    touched_experts=statistics.mean(s[3] for s in samples),
                    padded_rows=statistics.mean(s[4] for s in samples),
                )
            )
    for row in rows:
        base = next(
            r for r in rows if r.device == row.device and r.zero_rate == min(rates)
        ).fused_us
        row.speedup_vs_0pct = base / row.fused_us
        row.speedup_vs_expert0 = row.expert0_us / row.fused_us
    return rows


def format_table(rows: list[RooflineRow], devices: list[str]) -> str:
    """One line per (model, tokens, zero rate), the devices side by side."""
    head = "| model | tokens | zero picks | touched experts | padded rows |"
    rule = "|---|---:|---:|---:|---:|"
    for d in devices:
        head += f" {d} us | {d} bound | {d} vs 0 % | {d} vs expert 0 |"
        rule += "---:|---|---:|---:|"
    lines = [head, rule]
    keys = sorted({(r.model, r.routing, r.tokens, r.zero_rate) for r in rows})
    for model, routing, tokens, rate in keys:
        by_device = {
            r.device: r
            for r in rows
            if (r.model, r.routing, r.tokens, r.zero_rate) == (model, routing, tokens, rate)
        }
        first = by_device[devices[0]]
        line = (
            f"| {model}{'' if routing == 'uniform' else f' ({routing})'} | {tokens} "
            f"| {rate:.0%} | {first.touched_experts:.1f} | {first.padded_rows:.0f} |"
        )
        for d in devices:
            r = by_device[d]
            line += (
                f" {r.fused_us:.1f} | {r.bound} | {r.speedup_vs_0pct:.2f}x "
                f"| {r.speedup_vs_expert0:.2f}x |"
            )
        lines.append(line)
    return "\n".join(lines)


def _list(text: str, cast=str) -> list:
    return [cast(part) for part in text.split(",") if part]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen3,glm")
    parser.add_argument("--tokens", default="1,16,256,4096,16384")
    parser.add_argument("--zero", default="0,0.25,0.5")
    parser.add_argument("--routing", default="uniform", help="uniform and/or skewed")
    parser.add_argument("--seeds", type=int, default=8, help="route draws averaged per row")
    parser.add_argument("--devices", default="H100,H200", help=f"of {sorted(DEVICES)}")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    models, devices = _list(args.model), _list(args.devices)
    for name, known, flag in ((models, MOE_SHAPES, "--model"), (devices, DEVICES, "--devices")):
        unknown = [x for x in name if x not in known]
        if unknown:
            parser.error(f"{flag}: unknown {unknown}; choose from {sorted(known)}")
    rates = _list(args.zero, float)
    if not rates or any(not 0 <= r < 1 for r in rates):
        parser.error(f"--zero: rates in [0, 1) expected, got {args.zero!r}")
    rows = [
        row
        for model in models
        for routing in _list(args.routing)
        for tokens in _list(args.tokens, int)
        for row in model_rows(MOE_SHAPES[model], tokens, rates, routing, devices, args.seeds)
    ]
    print(format_table(rows, devices))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"model": "roofline", "rows": [asdict(r) for r in rows]}, out, indent=1)


if __name__ == "__main__":
    main()
