"""Fused ZEDA MoE kernel vs zero-pick rate, on a GPU (CUDA graphs, warm-up, median of runs).

    python bench/moe_kernel.py [--model qwen3|glm|both] [--tokens 1,16,256,4096,16384]
                               [--zero 0,0.25,0.5] [--routing uniform,skewed] [--json out.json]
    python bench/moe_kernel.py --layer-stack [--layers 4] [--tokens 4096]

Shapes: Qwen3-30B-A3B (128 real + 64 zero experts, top-8, H 2048, I 768) and GLM-4.7-Flash
(64 + 32, top-4, H 2048, I 1536), bf16. Every token gets exactly ``rate x K`` zero picks;
real picks are uniform over the experts or skewed (Zipf 1.2). Rows per configuration:

- ``fused``: our kernel (zero picks left out of the grouping); ``speedup_vs_0pct`` compares
  it with itself at 0 % zero picks.
- ``expert0``: vLLM's zero-expert approach, zero slots sent to expert 0 with weight 0 (the
  same kernel, so only the skipping differs).
- ``fused_atomic``: our kernel with ``deterministic=False`` (the down GEMM adds into the
  output atomically instead of writing per-pick rows for the ordered combine): what
  determinism costs.
- ``te``: transformer-engine's permute + GroupedLinear path (``backend="te"``), when
  transformer-engine is installed.
- ``torch``: the plain-torch grouped reference.

with time, achieved TFLOP/s (real picks only: 6 x H x I per pick), GB/s (expert weights
touched + activations), and the distinct experts touched. ``--layer-stack`` times
attention (SDPA) + ZEDA MoE layers with Qwen3-30B-A3B shapes at 0 % and 50 % zero picks.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics

import torch

from zeda_kernels.model_shapes import MOE_SHAPES, synthetic_routes


def timed(fn, repeats: int = 20) -> float:
    """Median milliseconds of ``fn`` replayed from a CUDA graph (after warm-up)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
        run = graph.replay
    except Exception:  # noqa: BLE001 (the torch reference syncs on .tolist(): no graph)
        run = fn
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_moe(model: str, tokens_list, rates, routings) -> list[dict]:
    from zeda_kernels.moe_dispatch import (
        ExpertsCall,
        backend_unavailable,
        grouped_experts_forward,
    )
    from zeda_kernels.triton_moe import fused_experts_forward

    have_te = backend_unavailable("te", cuda=True) is None
    shape = MOE_SHAPES[model]
    n, k, h, i = shape.real_experts, shape.top_k, shape.hidden, shape.inter
    dev, dt = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    gate_up = (torch.randn(n, 2 * i, h, generator=gen) / h**0.5).to(dev, dt)
    down = (torch.randn(n, h, i, generator=gen) / i**0.5).to(dev, dt)
    rows = []
    for routing in routings:
        for tokens in tokens_list:
            x = torch.randn(tokens, h, generator=gen).to(dev, dt)
            weights = torch.rand(tokens, k, generator=gen).to(dev)
            base = None
            for rate in rates:
                skewed = routing == "skewed"
                ids = synthetic_routes(tokens, shape, rate, skewed=skewed, generator=gen).to(dev)
                real = int((ids < n).sum())
                distinct = int(torch.unique(ids[ids < n]).numel())
                expert0 = torch.where(ids < n, ids, 0)
                w0 = torch.where(ids < n, weights, 0.0)
                run = functools.partial(grouped_experts_forward, num_real_experts=n)
                variants = {
                    "fused": functools.partial(
                        run, x, ids, weights, gate_up, down, backend="triton"
                    ),
                    "expert0": functools.partial(
                        run, x, expert0, w0, gate_up, down, backend="triton"
                    ),
                }
                variants["fused_atomic"] = functools.partial(
                    fused_experts_forward,
                    ExpertsCall(x, ids, weights, gate_up, down, n),
                    deterministic=False,
                )
                if have_te:
                    variants["te"] = functools.partial(
                        run, x, ids, weights, gate_up, down, backend="te"
                    )
                if tokens <= 4096:
                    variants["torch"] = functools.partial(
                        run, x, ids, weights, gate_up, down, backend="torch"
                    )
                for name, fn in variants.items():
                    with torch.no_grad():
                        ms = timed(fn)
                    picks = real if name != "expert0" else tokens * k
                    flops = 6 * h * i * picks
                    touched = distinct if name != "expert0" else int(torch.unique(expert0).numel())
                    bytes_moved = touched * 3 * h * i * 2 + tokens * h * 2 * 2
                    row = dict(
                        model=model,
                        routing=routing,
                        tokens=tokens,
                        zero_rate=rate,
                        variant=name,
                        ms=ms,
                        tflops=flops / ms / 1e9,
                        gbps=bytes_moved / ms / 1e6,
                        distinct_experts=touched,
                    )
                    if name == "fused" and rate == 0:
                        base = ms
                    if name == "fused" and base is not None:
                        row["speedup_vs_0pct"] = base / ms
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def bench_layer_stack(layers: int, tokens: int) -> list[dict]:
    """Attention (SDPA, GQA 32q/4kv heads of 128) + ZEDA MoE per layer, Qwen3-30B-A3B."""
    import torch.nn.functional as F

    from zeda_kernels.moe_dispatch import grouped_experts_forward

    shape = MOE_SHAPES["qwen3"]
    n, k, h, i = shape.real_experts, shape.top_k, shape.hidden, shape.inter
    dev, dt = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator().manual_seed(0)

    def weight(*shape):
        return (torch.randn(*shape, generator=gen) / shape[-1] ** 0.5).to(dev, dt)

    params = [
        dict(
            qkv=weight(32 * 128 + 2 * 4 * 128, h),
            o=weight(h, 32 * 128),
            gate_up=weight(n, 2 * i, h),
            down=weight(n, h, i),
        )
        for _ in range(layers)
    ]
    x0 = torch.randn(1, tokens, h, generator=gen).to(dev, dt)
    rows = []
    for rate in (0.0, 0.5):
        ids = synthetic_routes(tokens, shape, rate, generator=gen).to(dev)
        w = torch.rand(tokens, k, generator=gen).to(dev)

        def stack(ids=ids, w=w):
            x = x0
            for p in params:
                q, kk, v = (x @ p["qkv"].t()).split([32 * 128, 4 * 128, 4 * 128], -1)
                q = q.view(1, tokens, 32, 128).transpose(1, 2)
                kk = kk.view(1, tokens, 4, 128).transpose(1, 2)
                v = v.view(1, tokens, 4, 128).transpose(1, 2)
                a = F.scaled_dot_product_attention(q, kk, v, is_causal=True, enable_gqa=True)
                x = x + a.transpose(1, 2).reshape(1, tokens, -1) @ p["o"].t()
                moe = grouped_experts_forward(
                    x[0], ids, w, p["gate_up"], p["down"], num_real_experts=n, backend="triton"
                )
                x = x + moe[None]
            return x

        with torch.no_grad():
            ms = timed(stack)
        rows.append(dict(layer_stack=layers, tokens=tokens, zero_rate=rate, ms=ms))
        print(json.dumps(rows[-1]), flush=True)
    rows[-1]["speedup_vs_0pct"] = rows[0]["ms"] / rows[-1]["ms"]
    print(f"layer stack speed-up at 50 % zero picks: {rows[-1]['speedup_vs_0pct']:.2f}x")
    return rows


def tuned_configs() -> dict[str, dict[str, str]]:
    """The tile config each autotuner picked, per tuning key (shape, BLOCK_M, dtypes)."""
    from zeda_kernels import triton_moe

    tuners = {
        "gate_up": triton_moe._gate_up_tuned,
        "down": triton_moe._down_tuned,
        "down_atomic": triton_moe._down_atomic_tuned,
    }
    return {
        name: {str(key): str(config) for key, config in tuner.cache.items()}
        for name, tuner in tuners.items()
        if tuner is not None
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="both", choices=[*MOE_SHAPES, "both"])
    parser.add_argument("--tokens", default="1,16,256,4096,16384")
    parser.add_argument("--zero", default="0,0.25,0.5")
    parser.add_argument("--routing", default="uniform,skewed")
    parser.add_argument("--layer-stack", action="store_true")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(
            "bench/moe_kernel.py times the fused kernels on a GPU and needs CUDA; on CPU the "
            "kernels are checked for correctness by tests/test_triton_moe.py"
        )
    tokens = [int(t) for t in args.tokens.split(",")]
    if args.layer_stack:
        rows = bench_layer_stack(args.layers, tokens[-1] if len(tokens) == 1 else 4096)
    else:
        models = ["qwen3", "glm"] if args.model == "both" else [args.model]
        rates = [float(r) for r in args.zero.split(",")]
        rows = [r for m in models for r in bench_moe(m, tokens, rates, args.routing.split(","))]
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "rows": rows,
        "tuned_configs": tuned_configs(),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
