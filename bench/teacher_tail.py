"""How much of a student's reverse KL to its teacher lies outside the teacher's top-k?

`stage2.loss=topk_kl` trains the reverse KL of the vocabulary coarsened to the teacher's
top-k plus one "other" bucket; the frontier measures the full-vocabulary KL. This script
recomputes both on a student's own greedy answers (the ``eval.json`` a frontier or
``python -m zeda_rl.eval`` run wrote for it), at the positions the frontier measures:

    python bench/teacher_tail.py --model RUN/student_final --teacher TEACHER_DIR \
        --eval RUN/frontier/student/eval.json --requests 200 --k 16 20 32 64 128
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the student's folder")
    parser.add_argument("--teacher", required=True, help="the teacher's folder")
    parser.add_argument("--eval", required=True, help="eval.json holding the student's answers")
    parser.add_argument("--requests", type=int, default=200, help="answers drawn (seed 0)")
    parser.add_argument("--k", type=int, nargs="+", default=[16, 20, 32, 64, 128])
    args = parser.parse_args(argv)
    eval_path = Path(args.eval)
    if not eval_path.is_file():
        print(f"error: --eval {eval_path} is not a file", file=sys.stderr)
        return 2
    requests = json.loads(eval_path.read_text()).get("requests") or []
    if not requests:
        print(f"error: {eval_path} holds no requests", file=sys.stderr)
        return 2
    if min(args.k) < 1:
        print("error: every --k must be >= 1", file=sys.stderr)
        return 2

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import zeda_rl  # noqa: F401  (registers the ZEDA architectures)
    from zeda_rl.data.tokenizer import chat_example, chat_prompt
    from zeda_rl.eval.harness import indomain_items
    from zeda_rl.eval.metrics import teacher_agreement
    from zeda_rl.losses.topk_kl import topk_reverse_kl

    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    families = sorted({r["benchmark"].split("/", 1)[1] for r in requests})
    per_family = max(sum(r["benchmark"].endswith(f) for r in requests) for f in families)
    items = {(i.benchmark, i.id): i for i in indomain_items(families, per_family * len(families))}
    drawn = random.Random(0).sample(requests, min(args.requests, len(requests)))

    full_sum, positions, tail_sum = 0.0, 0, {k: 0.0 for k in args.k}
    coarse_sum = {k: 0.0 for k in args.k}
    with torch.no_grad():
        for request in drawn:
            item = items.get((request["benchmark"], request["id"]))
            if item is None:
                print(f"error: {request['benchmark']} {request['id']} is not an in-domain item")
                return 2
            prompt = tokenizer(chat_prompt(item.prompt), add_special_tokens=False)["input_ids"]
            ids = tokenizer(
                chat_example(item.prompt, request["response"]), add_special_tokens=False
            )
            ids = torch.tensor([ids["input_ids"]])
            # The frontier's positions: those that generate the response (harness.evaluate).
            span = slice(len(prompt) - 1, ids.shape[1] - 1)
            student = model(input_ids=ids).logits[0, span].float()
            reference = torch.log_softmax(teacher(input_ids=ids).logits[0, span].float(), -1)
            every = torch.ones(student.shape[0], dtype=torch.bool)
            agreement = teacher_agreement(student, reference, every)
            full_sum += agreement.reverse_kl * agreement.tokens
            positions += agreement.tokens
            mask = every[None]
            for k in args.k:
                top = reference.topk(k, dim=-1)
                _, stats = topk_reverse_kl(student[None], top.indices[None], top.values[None], mask)
                coarse_sum[k] += stats["reverse_kl_sum"]
                tail_sum[k] += stats["teacher_tail_sum"]
    full = full_sum / max(positions, 1)
    print(f"{len(drawn)} answers, {positions} positions; full-vocabulary reverse KL {full:.4f}")
    print("| teacher top-k | coarsened KL | share of the full KL | teacher mass outside |")
    print("|---:|---:|---:|---:|")
    for k in args.k:
        coarse = coarse_sum[k] / max(positions, 1)
        print(
            f"| {k} | {coarse:.4f} | {coarse / max(full, 1e-12):.0%} | {tail_sum[k] / positions:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
