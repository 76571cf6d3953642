"""Structured tasks with checkable answers, in a chat-like prompt/response format.

Each task yields :class:`Example` records with a fixed train / held-out split that never
overlaps (generated tasks split by a hash of the question, file-backed tasks by id), so a
teacher's held-out accuracy measures what it learned, not what it memorised.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from zeda_rl.data.store import require, shared_data_dir

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Example:
    task: str
    prompt: str
    response: str  # the reference response (worked solution or answer)
    answer: str  # what exact match compares against
    meta: dict | None = None


def _split_of(text: str, heldout_share: float) -> str:
    bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") / 2**32
    return "heldout" if bucket < heldout_share else "train"


def addition(split: str, n: int, seed: int = 0) -> list[Example]:
    """The simplest task: two numbers below 100, e.g. 'What is 23 + 58?' -> '81'."""
    pairs = [(a, b) for a in range(100) for b in range(100)]
    pairs = [p for p in pairs if _split_of(f"{p[0]}+{p[1]}", 0.1) == split]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(pairs)
        out.append(Example("addition", f"What is {a} + {b}?", str(a + b), str(a + b)))
    return out


def chain(split: str, n: int, seed: int = 0) -> list[Example]:
    """Multi-step arithmetic with its steps written out: three numbers below 100 added and
    subtracted left to right (never two: those would be addition's questions), every
    partial result in [0, 200), e.g.
    'What is 23 + 58 - 17?' -> '23 + 58 = 81\n81 - 17 = 64\n#### 64'."""
    rng = random.Random(seed * 7919 + 11)
    out = []
    while len(out) < n:
        terms = [rng.randrange(100) for _ in range(3)]
        ops = [rng.choice("+-") for _ in terms[1:]]
        value, steps = terms[0], []
        for op, term in zip(ops, terms[1:], strict=True):
            new = value + term if op == "+" else value - term
            steps.append(f"{value} {op} {term} = {new}")
            value = new
            if not 0 <= value < 200:
                break
        if not 0 <= value < 200:
            continue
        question = " ".join(
            [str(terms[0])] + [f"{o} {t}" for o, t in zip(ops, terms[1:], strict=True)]
        )
        if _split_of(question, 0.1) != split:
            continue
        response = "\n".join(steps) + f"\n#### {value}"
        out.append(Example("chain", f"What is {question}?", response, str(value)))
    return out


def _gym(name: str, split: str, n: int, seed: int, **kwargs) -> Iterator[dict]:
    import reasoning_gym

    # Disjoint seed spaces, then the hash split on the question removes any collision.
    base = 1_000_003 * (seed + 1) + (0 if split == "train" else 7)
    produced, chunk = 0, 0
    while produced < n:
        dataset = reasoning_gym.create_dataset(name, size=max(64, n), seed=base + chunk, **kwargs)
        for item in dataset:
            if _split_of(item["question"], 0.1) != split:
                continue
            yield item
            produced += 1
            if produced == n:
                return
        chunk += 1


def arithmetic(split: str, n: int, seed: int = 0) -> list[Example]:
    """reasoning-gym basic_arithmetic: 2-3 terms of 1-2 digits, e.g. 'Calculate 56 + -33.'"""
    items = _gym(
        "basic_arithmetic", split, n, seed, min_terms=2, max_terms=3, min_digits=1, max_digits=2
    )
    return [Example("arithmetic", x["question"], x["answer"], x["answer"]) for x in items]


def gsm(split: str, n: int, seed: int = 0) -> list[Example]:
    """reasoning-gym gsm_symbolic: grade-school word problems, worked solution ending '#### N'."""
    out = []
    for x in _gym("gsm_symbolic", split, n, seed):
        question = x["question"].split(" Give the result")[0]
        out.append(Example("gsm", question, x["metadata"]["answer_cot"], x["answer"]))
    return out


def binary_ops(split: str, n: int, seed: int = 0) -> list[Example]:
    """OpenAI evals positive-binary-operations: '0111 + 01' in binary -> the decimal result."""
    (path,) = require("binary_ops")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    chosen = [r for i, r in enumerate(rows) if (i % 10 == 0) == (split == "heldout")]
    rng = random.Random(seed)
    rng.shuffle(chosen)
    return [
        Example(
            "binary_ops",
            f"In binary, {r['input'][-1]['content']} = ? Answer in decimal.",
            r["ideal"],
            r["ideal"],
        )
        for r in chosen[:n]
    ]


def mbpp_code(split: str, n: int, seed: int = 0) -> list[Example]:
    """MBPP: the upstream split (ids 11-510 for evaluation, the rest for training)."""
    path = shared_data_dir() / "mbpp" / "mbpp.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    is_eval = lambda r: 11 <= r["task_id"] <= 510  # noqa: E731
    chosen = [r for r in rows if is_eval(r) == (split == "heldout")]
    rng = random.Random(seed)
    rng.shuffle(chosen)
    out = []
    for r in chosen[:n]:
        prompt = f"{r['text']}\nYour code should pass: {r['test_list'][0]}"
        code = r["code"].replace("\r\n", "\n").strip()
        out.append(
            Example(
                "code", prompt, code, code, {"tests": r["test_list"], "setup": r["test_setup_code"]}
            )
        )
    return out


TASKS: dict[str, Callable[[str, int, int], list[Example]]] = {
    "addition": addition,
    "arithmetic": arithmetic,
    "chain": chain,
    "gsm": gsm,
    "binary_ops": binary_ops,
    "code": mbpp_code,
}


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(task: str, text: str) -> str:
    """The answer a response gives: after '####' for worked solutions, else the first number."""
    if task == "code":
        return text.strip()
    if "####" in text:
        text = text.split("####")[-1]
    match = _NUMBER.search(text)
    return match.group(0).replace(",", "") if match else text.strip()


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def answers_match(got: str, expected: str) -> bool:
    """Equal as numbers when both parse ('1260.0' == '1,260'), else as stripped strings."""
    a, b = _as_number(got), _as_number(expected)
    if a is not None and b is not None:
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    return got.strip() == expected.strip()


def is_correct(example: Example, response: str) -> bool:
    """Exact match of the extracted answer (math tasks; code is judged by running tests)."""
    if example.task == "code":
        raise ValueError("code responses are judged by running their tests, not by exact match")
    return answers_match(extract_answer(example.task, response), example.answer)
