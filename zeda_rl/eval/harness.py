"""Evaluate a model (ZEDA student or static teacher) the way the paper does.

For every benchmark item: generate a response, score it (exact match for math, sandboxed
tests for code), then run one teacher-forced forward over prompt + response to read the
routing of every token (zero-expert usage) and, when a teacher is given, the teacher's
logits on the same tokens (reverse KL, top-1 agreement). Generation and scoring are
independent of the backend that generated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from zeda_rl.data import benchmarks as bench
from zeda_rl.data.tasks import TASKS, answers_match, extract_answer
from zeda_rl.data.tokenizer import chat_example, chat_prompt
from zeda_rl.eval.ifbench import check_ifbench
from zeda_rl.eval.instructions import check_instructions
from zeda_rl.eval.metrics import (
    RoutingTrace,
    model_flops_saved,
    per_layer_zero_ratio,
    per_token_real_experts,
    pooled_zero_ratio,
    teacher_agreement,
    zero_ratio,
)
from zeda_rl.eval.sandbox import check_program

MATH, CODE, INSTRUCTIONS = "math", "code", "instructions"
CONTEXT_OVERFLOW = "prompt + budget exceed the model's context"


@dataclass
class Item:
    benchmark: str
    id: str
    prompt: str
    kind: str  # math | code
    answer: str | None = None
    tests: dict = field(default_factory=dict)
    max_new_tokens: int = 64


def _task_items(name: str, n: int, max_new: int) -> list[Item]:
    examples = TASKS[name]("heldout", n, 1)
    if name == "code":  # MBPP problems: judged by their asserts in the sandbox
        return [
            Item(
                "task/code",
                str(i),
                e.prompt,
                CODE,
                tests={"setup": e.meta["setup"], "asserts": e.meta["tests"]},
                max_new_tokens=max_new,
            )
            for i, e in enumerate(examples)
        ]
    return [
        Item(f"task/{name}", str(i), e.prompt, MATH, e.answer, max_new_tokens=max_new)
        for i, e in enumerate(examples)
    ]


def _bench_items(name: str, n: int | None, kind: str, max_new: int) -> list[Item]:
    rows = bench.BENCHMARKS[name]()
    rows = rows if n is None else rows[:n]
    return [Item(name, r.id, r.prompt, kind, r.answer, r.tests, max_new) for r in rows]


# New-token budgets of the structured tasks: their reference responses fit with room to spare.
TASK_BUDGETS = {
    "addition": 6,
    "arithmetic": 8,
    "chain": 40,
    "gsm": 160,
    "binary_ops": 8,
    "code": 128,
}
SUITES = ("tiny", "full", "indomain", "benchmarks")
# The real benchmarks, the paper's families (out of domain for an adaptation on the tasks).
REAL_BENCHMARKS = {
    "gsm8k": (MATH, 160),
    "mmath": (MATH, 96),
    "humaneval": (CODE, 128),
    "mbpp": (CODE, 128),
    "ifeval": (INSTRUCTIONS, 128),
    "ifbench": (INSTRUCTIONS, 128),
}


def indomain_items(families: list[str], total: int = 240) -> list[Item]:
    """Held-out items of exactly the task families an adaptation drew its prompts from
    (their held-out split never overlaps the train split the prompts come from)."""
    unknown = [f for f in families if f not in TASK_BUDGETS]
    if unknown or not families:
        raise ValueError(
            f"in-domain suite: families {unknown or families} have no held-out task; "
            f"choose from {sorted(TASK_BUDGETS)}"
        )
    per_family = -(-total // len(families))
    return [i for f in families for i in _task_items(f, per_family, TASK_BUDGETS[f])]


def benchmark_items(per_benchmark: int | None = 12) -> list[Item]:
    """The first ``per_benchmark`` items of each real benchmark (None: all of them)."""
    return [
        i
        for name, (kind, budget) in REAL_BENCHMARKS.items()
        for i in _bench_items(name, per_benchmark, kind, budget)
    ]


def suite_items(suite: str, families: list[str] | None = None) -> list[Item]:
    """``tiny``: a few of each family, minutes on a CPU; ``full``: every benchmark item;
    ``indomain``: held-out items of ``families`` (the adaptation's prompt families);
    ``benchmarks``: a dozen items of each real benchmark (out of domain)."""
    if suite == "indomain":
        return indomain_items(list(families or ["addition", "arithmetic"]))
    if suite == "benchmarks":
        return benchmark_items()
    if suite == "tiny":
        return (
            _task_items("addition", 40, 6)
            + _task_items("arithmetic", 20, 8)
            + _task_items("gsm", 8, 160)
            + _bench_items("gsm8k", 8, MATH, 160)
            + _bench_items("mmath", 4, MATH, 96)
            + _bench_items("humaneval", 4, CODE, 128)
            + _bench_items("mbpp", 4, CODE, 128)
            + _bench_items("ifeval", 6, INSTRUCTIONS, 128)
            + _bench_items("ifbench", 6, INSTRUCTIONS, 128)
        )
    if suite == "full":
        return (
            _task_items("addition", 500, 6)
            + _task_items("arithmetic", 500, 8)
            + _task_items("gsm", 200, 256)
            + _bench_items("gsm8k", None, MATH, 512)
            + _bench_items("mmath", None, MATH, 1024)
            + _bench_items("humaneval", None, CODE, 512)
            + _bench_items("mbpp", None, CODE, 512)
            + _bench_items("ifeval", None, INSTRUCTIONS, 1024)
            + _bench_items("ifbench", None, INSTRUCTIONS, 1024)
        )
    raise ValueError(f"--suite {suite!r}: choose one of {', '.join(SUITES)}")


def score(item: Item, response: str) -> tuple[bool, str]:
    if item.kind == MATH:
        got = extract_answer("gsm", response)
        return answers_match(got, item.answer or ""), got
    if item.kind == INSTRUCTIONS:
        # Prompt-level strict accuracy: every instruction followed.
        check = check_ifbench if item.benchmark == "ifbench" else check_instructions
        followed = check(response, item.tests["instruction_ids"], item.tests["kwargs"])
        return all(followed), f"{sum(followed)}/{len(followed)} instructions"
    if item.benchmark == "humaneval":
        program = item.prompt + response
        tests = item.tests["test"] + f"\ncheck({item.tests['entry_point']})\n"
    else:  # mbpp
        program = item.tests.get("setup", "") + "\n" + response
        tests = "\n".join(item.tests["asserts"])
    result = check_program(program, tests, timeout_s=10.0)
    return result.passed, result.status


@dataclass
class RequestResult:
    benchmark: str
    id: str
    correct: bool
    extracted: str
    response: str
    response_tokens: list[str]
    zero_ratio: float | None
    real_experts_per_token: list[float] | None
    reverse_kl: float | None = None  # mean over this request's response tokens
    top1_agreement: float | None = None
    agreement_tokens: int = 0  # response tokens the two above are means over


def _routing_trace(routing, mask: torch.Tensor, top_k: int) -> RoutingTrace:
    real = torch.stack([r.real_experts_per_token[mask] for r in routing], dim=1)
    return RoutingTrace(real, top_k, [r.layer_idx for r in routing])


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    items: list[Item],
    *,
    teacher=None,
    generate: Callable[[list[str], int], list[str]],
    log=print,
) -> dict:
    """Generate, score and measure every item; returns the full result dictionary."""
    started = time.perf_counter()
    # Items whose prompt plus budget do not fit the model's context are not generated on any
    # backend (vLLM refuses them; transformers would run past the trained positions): they
    # count as wrong and are reported as overflowing.
    context = getattr(model.config, "max_position_embeddings", None)
    overflow = {
        i
        for i, item in enumerate(items)
        if context is not None
        and len(tokenizer(chat_prompt(item.prompt), add_special_tokens=False)["input_ids"])
        + item.max_new_tokens
        > context
    }
    by_budget: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        if i not in overflow:
            by_budget.setdefault(item.max_new_tokens, []).append(i)
    responses = [""] * len(items)
    for budget, idx in by_budget.items():
        for i, text in zip(idx, generate([items[j].prompt for j in idx], budget), strict=True):
            responses[i] = text
    gen_seconds = time.perf_counter() - started

    is_zeda = hasattr(model.config, "num_zero_experts")
    results: list[RequestResult] = []
    traces: dict[str, list[RoutingTrace]] = {}
    for i, (item, response) in enumerate(zip(items, responses, strict=True)):
        if i in overflow:
            results.append(
                RequestResult(item.benchmark, item.id, False, CONTEXT_OVERFLOW, "", [], None, None)
            )
            continue
        correct, extracted = score(item, response)
        prompt_ids = tokenizer(chat_prompt(item.prompt), add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(chat_example(item.prompt, response), add_special_tokens=False)[
            "input_ids"
        ]
        ids = torch.tensor([full_ids])
        # The positions that generate the response: the last prompt token (whose forward
        # gives the first response token) up to the one before the end-of-turn marker. Their
        # routing is the compute a served response costs, their logits its distribution.
        generating = torch.zeros(len(full_ids), dtype=torch.bool)
        generating[len(prompt_ids) - 1 : -1] = True
        out = model(input_ids=ids)
        result = RequestResult(
            item.benchmark,
            item.id,
            correct,
            extracted,
            response,
            tokenizer.convert_ids_to_tokens(full_ids[len(prompt_ids) :]),
            None,
            None,
        )
        if is_zeda and out.routing:
            trace = _routing_trace(out.routing, generating, model.config.num_experts_per_tok)
            traces.setdefault(item.benchmark, []).append(trace)
            result.zero_ratio = zero_ratio(trace)
            result.real_experts_per_token = per_token_real_experts(trace)
        if teacher is not None:
            reference = teacher(input_ids=ids).logits[0]
            agree = teacher_agreement(out.logits[0], reference, generating)
            result.reverse_kl, result.top1_agreement = agree.reverse_kl, agree.top1
            result.agreement_tokens = agree.tokens
        results.append(result)

    summary = _summarize(results, traces, model.config, teacher is not None)
    summary["context_overflow"] = len(overflow)
    summary["seconds"] = {
        "generate": round(gen_seconds, 1),
        "total": round(time.perf_counter() - started, 1),
    }
    log(f"evaluated {len(items)} requests in {summary['seconds']['total']}s")
    return {"summary": summary, "requests": [asdict(r) for r in results]}


def _mean(values: list[float | None]) -> float | None:
    """Mean over the requests that were measured (overflowing prompts were not)."""
    measured = [v for v in values if v is not None]
    return sum(measured) / len(measured) if measured else None


def _pooled(rows: list[RequestResult], field_name: str) -> float | None:
    """Mean over every response token of the measured requests: the weighting the zero-expert
    ratio has, so that figures compared at "equal zero share" weigh the same tokens."""
    measured = [r for r in rows if getattr(r, field_name) is not None and r.agreement_tokens]
    tokens = sum(r.agreement_tokens for r in measured)
    if not tokens:
        return None
    return sum(getattr(r, field_name) * r.agreement_tokens for r in measured) / tokens


def _summarize(
    results: list[RequestResult], traces: dict[str, list[RoutingTrace]], config, with_teacher: bool
) -> dict:
    per_benchmark: dict[str, dict] = {}
    for name in dict.fromkeys(r.benchmark for r in results):
        rows = [r for r in results if r.benchmark == name]
        entry: dict = {"n": len(rows), "accuracy": sum(r.correct for r in rows) / len(rows)}
        if name in traces:
            entry["zero_expert_ratio"] = pooled_zero_ratio(traces[name])
        if with_teacher:
            entry["reverse_kl"] = _pooled(rows, "reverse_kl")
            entry["top1_agreement"] = _pooled(rows, "top1_agreement")
        per_benchmark[name] = entry
    all_traces = [t for ts in traces.values() for t in ts]
    overall_zero = pooled_zero_ratio(all_traces) if all_traces else 0.0
    summary = {
        "requests": len(results),
        "accuracy": sum(r.correct for r in results) / max(len(results), 1),
        "zero_expert_ratio": overall_zero,
        "zero_expert_ratio_per_layer": per_layer_zero_ratio(all_traces),
        "expert_flops_saved": overall_zero,  # every routed slot costs the same FLOPs
        "model_flops_saved_short_context": model_flops_saved(config, overall_zero),
        "per_benchmark": per_benchmark,
    }
    if with_teacher:
        # Pooled over response tokens, as the zero-expert ratio is; the per-request mean
        # (each request weighted alike) is kept beside it for comparison with older reports.
        summary["reverse_kl"] = _pooled(results, "reverse_kl")
        summary["top1_agreement"] = _pooled(results, "top1_agreement")
        summary["reverse_kl_request_mean"] = _mean([r.reverse_kl for r in results])
        summary["response_tokens"] = sum(r.agreement_tokens for r in results)
    return summary
