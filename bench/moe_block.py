"""MoE block forward time at 0 / 25 / 50 % zero-expert picks (plain-torch grouped dispatch).

    python bench/moe_block.py [--tokens 4096] [--experts 128] [--top-k 8] [--hidden 2048]
                              [--intermediate 768] [--repeats 3] [--json out.json]

Qwen3-30B-A3B proportions by default (128 real + 64 zero experts, top-8, H 2048, I 768).
Routes are forced through routing replay so each token has exactly rate * K zero picks and
(K - rate * K) distinct real experts drawn uniformly; the block's own router still runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from zeda_rl.models import ZedaQwen3MoeConfig
from zeda_rl.models.moe_block import ZedaSoftmaxMoeBlock
from zeda_rl.models.zero_experts import RoutingState


def forced_routes(
    tokens: int, num_real: int, num_zero: int, top_k: int, zero_picks: int, seed: int
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(tokens, num_real, generator=g).argsort(dim=1)[:, : top_k - zero_picks]
    zero = num_real + torch.rand(tokens, num_zero, generator=g).argsort(dim=1)[:, :zero_picks]
    return torch.cat([real, zero], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    config = ZedaQwen3MoeConfig(
        hidden_size=args.hidden,
        moe_intermediate_size=args.intermediate,
        num_experts=args.experts,
        num_experts_per_tok=args.top_k,
        norm_topk_prob=True,
        num_hidden_layers=1,
    )
    state = RoutingState()
    torch.manual_seed(0)
    block = ZedaSoftmaxMoeBlock(config, 0, state).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.02)
    x = torch.randn(args.tokens, args.hidden)
    routes = {
        rate: forced_routes(
            args.tokens,
            args.experts,
            config.num_zero_experts,
            args.top_k,
            round(rate * args.top_k),
            0,
        )
        for rate in args.rates
    }
    times: dict[float, list[float]] = {rate: [] for rate in args.rates}
    with torch.no_grad():
        # Round-robin over the rates so drift of a shared machine hits them all alike;
        # the first round warms up allocators and caches and is not counted.
        for i in range(args.repeats + 1):
            for rate in args.rates:
                state.begin(None, {0: routes[rate]})
                start = time.perf_counter()
                block(x)
                elapsed = time.perf_counter() - start
                state.end()
                if i > 0:
                    times[rate].append(elapsed)
    results = []
    for rate in args.rates:
        zero_picks = round(rate * args.top_k)
        best = min(times[rate])
        real_slots = args.tokens * (args.top_k - zero_picks)
        flops = real_slots * 3 * 2 * args.hidden * args.intermediate
        results.append(
            {
                "zero_pick_rate": zero_picks / args.top_k,
                "seconds": best,
                "median_seconds": sorted(times[rate])[len(times[rate]) // 2],
                "gflops_per_s": flops / best / 1e9,
                "real_slots": real_slots,
            }
        )
    base = results[0]["seconds"]
    print(
        f"MoE block forward, {args.tokens} tokens, {args.experts}+{config.num_zero_experts} experts, "
        f"top-{args.top_k}, H {args.hidden}, I {args.intermediate}, fp32, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}"
    )
    print(f"{'zero picks':>10} {'best s':>8} {'median s':>9} {'GFLOP/s':>8} {'speed-up':>9}")
    for r in results:
        r["speedup_vs_0"] = base / r["seconds"]
        print(
            f"{r['zero_pick_rate']:>10.0%} {r['seconds']:>8.3f} {r['median_seconds']:>9.3f} "
            f"{r['gflops_per_s']:>8.1f} {r['speedup_vs_0']:>8.2f}x"
        )
    if args.json:
        meta = {
            "args": vars(args),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
