"""The quality frontier of a ZEDA run: every method at equal compute.

    python bench/quality_frontier.py --run RUN_DIR [--seeds 0 1] [--suites indomain benchmarks]
                                     [--dial -1 -0.5 0.5 1] [--ablations stage1_only ...]
    make frontier RUN=RUN_DIR

RUN_DIR is a finished `python -m zeda_rl.launch` run. On one suite at a time, with the same
weighting for every variant (zero share, reverse KL and top-1 pooled over response tokens;
zeda_rl/eval/frontier.py), it evaluates:

- the teacher; training-free Top-P on the teacher at each --top-p; static top-K' (K' < K);
- the ZEDA student of every seed, and each across the compute dial (--dial biases);
- ablations of the same run configuration, every seed: stage 1 only, stage 2 only, no GAL.

Students of other seeds and the ablations are trained by the launcher itself, with the run's
own overrides plus `seed=S` and the ablation's (into OUT/runs/, reused when already there).
Suites: `indomain`, held-out items of the run's prompt families (--items of them), and
`benchmarks`, a dozen items of each real benchmark (out of domain). Writes per suite
OUT/SUITE/frontier.{json,md} and frontier_{accuracy,reverse_kl}.png (OUT: RUN_DIR/frontier).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ABLATIONS = {
    "stage1_only": ["stage2.enabled=false"],
    "stage2_only": ["stage1.enabled=false"],
    "no_gal": ["group_aux_loss.alpha=0"],
}


def run_overrides(run_dir: Path) -> list[str]:
    """The launcher overrides the run was made with (its own folder left out)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        raise SystemExit(f"error: --run {run_dir}: no .hydra/overrides.yaml (not a launcher run)")
    import yaml

    return [o for o in yaml.safe_load(path.read_text()) or [] if not o.startswith("hydra.")]


def trained_student(run_dir: Path) -> Path | None:
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return None
    final = json.loads(summary.read_text()).get("pipeline", {}).get("student_final")
    return Path(final) if final and (Path(final) / "config.json").is_file() else None


def launch(base: list[str], extra: list[str], run_dir: Path) -> Path:
    """A launcher run of ``base + extra`` into ``run_dir`` (reused when it already finished)."""
    final = trained_student(run_dir)
    if final is not None:
        print(f"  reusing {run_dir}")
        return final
    cmd = [sys.executable, "-m", "zeda_rl.launch", *base, *extra, f"hydra.run.dir={run_dir}"]
    print(f"  training: {' '.join(cmd[3:])}")
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: the run {run_dir} failed:\n{result.stderr[-3000:]}")
    print(f"  done in {time.perf_counter() - started:.0f}s")
    final = trained_student(run_dir)
    if final is None:
        raise SystemExit(f"error: the run {run_dir} left no adapted student")
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="a finished launcher run")
    parser.add_argument("--out", type=Path, default=None, help="default RUN/frontier")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the run's + 1")
    parser.add_argument(
        "--suites",
        nargs="+",
        default=["indomain", "benchmarks"],
        choices=["indomain", "benchmarks"],
    )
    parser.add_argument("--items", type=int, default=240, help="in-domain items")
    parser.add_argument("--top-p", type=float, nargs="+", default=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    parser.add_argument("--dial", type=float, nargs="+", default=[-1.0, -0.5, 0.5, 1.0])
    parser.add_argument("--ablations", nargs="*", default=list(ABLATIONS), choices=list(ABLATIONS))
    parser.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    args = parser.parse_args(argv)

    run_dir = args.run.resolve()
    main_student = trained_student(run_dir)
    if main_student is None:
        print(f"error: --run {run_dir}: no finished run (summary.json with student_final)")
        return 2
    if any(not 0 < p <= 1 for p in args.top_p):
        print(f"error: --top-p {args.top_p}: every p must be in (0, 1]")
        return 2
    summary = json.loads((run_dir / "summary.json").read_text())
    import yaml

    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    base = run_overrides(run_dir)
    run_seed = int(config.get("seed", 0))
    seeds = args.seeds or [run_seed, run_seed + 1]
    out = (args.out or run_dir / "frontier").resolve()
    started = time.perf_counter()

    # 1. Every trained student: the run's, other seeds, the ablations (evaluations off).
    quiet = ["eval.enabled=false", "eval.frontier=false"]
    students: list[tuple[str, int, Path]] = []
    for seed in seeds:
        if seed == run_seed:
            students.append(("zeda", seed, main_student))
        else:
            path = launch(base, [*quiet, f"seed={seed}"], out / "runs" / f"zeda-s{seed}")
            students.append(("zeda", seed, path))
        for name in args.ablations:
            path = launch(
                base, [*quiet, f"seed={seed}", *ABLATIONS[name]], out / "runs" / f"{name}-s{seed}"
            )
            students.append((name, seed, path))
    train_seconds = time.perf_counter() - started

    # 2. Every variant on every suite.
    from zeda_rl.tracking import quiet_third_party

    quiet_third_party()
    from transformers import AutoModelForCausalLM

    import zeda_rl  # noqa: F401  (registers the ZEDA architectures)
    from zeda_rl.eval.frontier import (
        Variant,
        baseline_variants,
        dial_variants,
        evaluate_point,
        markdown_table,
        write_frontier,
    )
    from zeda_rl.eval.harness import benchmark_items, indomain_items

    teacher_dir, student_dir = summary["teacher"], summary["student"]
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    variants = baseline_variants(
        teacher_dir, student_dir, teacher.config.num_experts_per_tok, args.top_p
    )
    for method, seed, path in students:
        label = "student" if method == "zeda" else method.replace("_", " ")
        variants.append(Variant(method, label, str(path), seed=seed))
        if method == "zeda":
            variants += dial_variants(str(path), args.dial, seed)
    families = list(config["prompts"]["mix"])
    record = {
        "run": str(run_dir),
        "seeds": seeds,
        "train_seconds": round(train_seconds),
        "suites": {},
    }
    for suite in args.suites:
        items = indomain_items(families, args.items) if suite == "indomain" else benchmark_items()
        print(f"{suite}: {len(items)} items, {len(variants)} variants")
        points = []
        for v in variants:
            t0 = time.perf_counter()
            point = evaluate_point(  # the teacher's baselines come from the shared cache
                v,
                teacher,
                teacher_dir,
                items,
                backend=args.backend,
                out_dir=out / suite / "evals" / f"{v.method}-{v.label.replace(' ', '_')}-s{v.seed}",
                log=lambda _: None,
            )
            points.append(point)
            kl = point["reverse_kl"]
            print(
                f"  {v.method:13s} {v.label:14s} seed {v.seed!s:4s} zero {point['zero_share']:6.1%}  "
                f"acc {point['accuracy']:6.1%}  KL {'-' if kl is None else f'{kl:.4f}'}  "
                f"({time.perf_counter() - t0:.0f}s)"
            )
        where = (
            f"{len(items)} held-out items of {', '.join(families)}"
            if suite == "indomain"
            else f"{len(items)} items of the real benchmarks (out of domain)"
        )
        title = f"Quality frontier of {run_dir.name}: {where}"
        paths = write_frontier(points, out / suite, title)
        record["suites"][suite] = {"items": len(items), "frontier": str(paths["json"])}
        print(markdown_table(points, title))
    record["seconds"] = round(time.perf_counter() - started)
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {out} in {record['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
