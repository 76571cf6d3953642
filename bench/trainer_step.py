"""Trainer step time of the torch and megatron backends on the tiny experiment's student.

    python bench/trainer_step.py [--model DIR] [--samples 32] [--steps 5] [--json out.json]

By default the student is the cached `cpu` Qwen3-MoE teacher (trained on first use, as in
`make demo`) converted to ZEDA; a step is one stage-2-shaped update: 32 samples of a
16-token prompt and a 48-token response, micro-batches of 8, SFT and OPD objectives.
Configurations: torch on 1 rank, megatron on 1 rank (EP 1), megatron on 2 gloo ranks with
the experts split (EP 2, each rank half the samples). Reports the median step seconds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from zeda_rl.losses.group_aux_loss import GroupAuxLossConfig
from zeda_rl.trainer.batch import Sample
from zeda_rl.trainer.distributed import local_init_method
from zeda_rl.trainer.interface import OptimConfig, RankSpec
from zeda_rl.trainer.registry import make_backend


def samples(num: int, vocab: int) -> list[Sample]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(num):
        prompt = torch.randint(5, vocab, (16,), generator=g).tolist()
        response = torch.randint(5, vocab, (48,), generator=g).tolist()
        lp = (-torch.rand(48, generator=g) - 1).tolist()
        out.append(Sample(prompt, response, lp, [x - 0.1 for x in lp]))
    return out


def rank_main(kind, model_dir, rank, world, init, args, out_path):
    torch.set_num_threads(max(1, 2 // world))
    backend = make_backend(
        kind,
        model_dir,
        RankSpec(
            rank=rank,
            world_size=world,
            init_method=init,
            optim=OptimConfig(lr=1e-5, micro_batch_size=8),
            gal=GroupAuxLossConfig(),
            temperature=1.0,
            routing_replay=False,
        ),
        {"expert_parallel": world} if kind == "megatron" else None,
    )
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    data = samples(args.samples, vocab)
    tokens = sum(len(s.response_ids) for s in data)
    share = len(data) // world
    mine = data[rank * share : (rank + 1) * share]
    times = {}
    for objective in ("sft", "opd"):
        backend.train_step(mine, objective=objective, lr=1e-5, global_tokens=tokens)  # warm-up
        seconds = []
        for _ in range(args.steps):
            t = time.perf_counter()
            backend.train_step(mine, objective=objective, lr=1e-5, global_tokens=tokens)
            seconds.append(time.perf_counter() - t)
        times[objective] = statistics.median(seconds)
    if rank == 0:
        Path(out_path).write_text(json.dumps(times))
    backend.close()


def run(kind: str, model_dir: str, world: int, args) -> dict:
    ctx = mp.get_context("spawn")
    init = local_init_method()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        procs = [
            ctx.Process(target=rank_main, args=(kind, model_dir, r, world, init, args, out))
            for r in range(world)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"{kind} rank failed")
        return json.loads(out.read_text())


def default_model(tmp: Path) -> str:
    from zeda_rl.convert import convert
    from zeda_rl.pretrain.cache import ensure_teacher

    teacher = ensure_teacher("qwen3_moe", "cpu", 0, False)
    convert(teacher, tmp / "student", log=lambda *_: None)
    return str(tmp / "student")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a ZEDA checkpoint folder (default: the tiny student)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or default_model(Path(tmp))
        rows = []
        for kind, world in (("torch", 1), ("megatron", 1), ("megatron", 2)):
            times = run(kind, model, world, args)
            rows.append(
                {"backend": kind, "ranks": world, "ep": world if kind == "megatron" else 1, **times}
            )
            print(
                f"{kind:8s} ranks {world}  sft {times['sft']:.3f} s/step  "
                f"opd {times['opd']:.3f} s/step",
                flush=True,
            )
    result = {
        "device": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "samples": args.samples,
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
