"""How a run's student moves against Top-P as stage 2 goes on: every saved stage-2 checkpoint.

    python bench/stage2_trend.py --run RUN_DIR [--items 240] [--dial 0 0.5]

RUN_DIR is a finished launcher run saved with `checkpoint.every_steps=N` (and `keep` large
enough to hold them). Evaluates the converted student (step 0: no training), every
`checkpoints/stage2-*` and the final student on the run's in-domain held-out items, each at
the given dial settings, with Top-P and static top-K' on the teacher (the frontier's shared
baseline cache) interpolated at each point's zero share. Prints a markdown table and writes
RUN_DIR/stage2_trend.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def checkpoint_as_model(checkpoint: Path, student_dir: Path, scratch: Path) -> Path:
    """A model folder for a checkpoint: its weights and config, the student's tokenizer."""
    folder = scratch / checkpoint.name
    folder.mkdir()
    for path in checkpoint.iterdir():
        if path.suffix in (".json", ".safetensors") and path.name not in ("state.json",):
            (folder / path.name).symlink_to(path)
    for path in student_dir.iterdir():
        if (
            path.name.startswith(("tokenizer", "special_tokens"))
            and not (folder / path.name).exists()
        ):
            (folder / path.name).symlink_to(path)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--items", type=int, default=240)
    parser.add_argument("--dial", type=float, nargs="+", default=[0.0])
    parser.add_argument("--top-p", type=float, nargs="+", default=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    args = parser.parse_args(argv)
    run = args.run.resolve()
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        print(f"error: --run {run}: no summary.json (not a finished launcher run)")
        return 2
    summary = json.loads(summary_path.read_text())
    checkpoints = sorted((run / "checkpoints").glob("stage2-*"))
    if not checkpoints:
        print(f"error: --run {run}: no checkpoints/stage2-* (run with checkpoint.every_steps)")
        return 2

    from zeda_rl.tracking import quiet_third_party

    quiet_third_party()
    import yaml
    from transformers import AutoModelForCausalLM

    import zeda_rl  # noqa: F401  (registers the ZEDA architectures)
    from zeda_rl.eval.frontier import (
        Variant,
        baseline_variants,
        compare,
        evaluate_point,
    )
    from zeda_rl.eval.harness import indomain_items
    from zeda_rl.models.top_p import routing_overrides

    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    items = indomain_items(list(config["prompts"]["mix"]), args.items)
    teacher_dir, student_dir = summary["teacher"], Path(summary["student"])
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    top_k = teacher.config.num_experts_per_tok
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        models = [(0, student_dir)] + [
            (int(c.name.split("-")[1]) + 1, checkpoint_as_model(c, student_dir, Path(scratch)))
            for c in checkpoints
        ]
        variants = baseline_variants(teacher_dir, str(student_dir), top_k, args.top_p)
        for step, folder in models:
            for b in args.dial:
                label = f"step {step}" + (f" dial {b:+g}" if b else "")
                overrides = routing_overrides(zero_expert_bias=b) if b else {}
                variants.append(Variant("zeda", label, str(folder), overrides, step))
        points = [
            evaluate_point(v, teacher, teacher_dir, items, backend="vllm", log=lambda _: None)
            for v in variants
        ]
    rows = compare(points)
    lines = [
        f"Stage-2 trend of {run.name}: {len(items)} held-out items",
        "",
        "| student | zero share | accuracy | reverse KL | Top-P at that share: acc / KL "
        "| KL / Top-P KL |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        kl, top_kl = r["reverse_kl"], r.get("top_p_reverse_kl")
        ratio = f"{kl / top_kl:.2f}x" if kl is not None and top_kl else "-"
        top = f"{r['top_p_accuracy']:.1%} / {top_kl:.4f}" if top_kl is not None else "(outside)"
        lines.append(
            f"| {r['label']} | {r['zero_share']:.1%} | {r['accuracy']:.1%} | {kl:.4f} "
            f"| {top} | {ratio} |"
        )
    print("\n".join(lines))
    out = run / "stage2_trend.json"
    out.write_text(json.dumps({"points": points, "comparisons": rows}, indent=1, default=str))
    print(f"written to {out} in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
