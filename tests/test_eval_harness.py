"""A short end-to-end evaluation of a tiny ZEDA student against its teacher."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from tests.conftest import tokenized_zeda_pair
from zeda_rl.data.tasks import addition
from zeda_rl.eval.generation import hf_generate
from zeda_rl.eval.harness import CODE, MATH, Item, evaluate, score, suite_items
from zeda_rl.eval.report import write_report


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalpair")
    teacher, tok = tokenized_zeda_pair(root, gate_std=0.5)
    student = AutoModelForCausalLM.from_pretrained(root / "student").eval()
    return student, teacher, tok, root


def test_scoring_math_and_code():
    math_item = Item("gsm8k", "0", "q", MATH, answer="18")
    assert score(math_item, "She makes 9 * 2 = 18 dollars.\n#### 18") == (True, "18")
    assert score(math_item, "#### 17")[0] is False
    he = Item(
        "humaneval",
        "x",
        "def add(a, b):\n",
        CODE,
        tests={"test": "def check(f):\n    assert f(1, 2) == 3\n", "entry_point": "add"},
    )
    assert score(he, "    return a + b\n")[0] is True
    assert score(he, "    return a - b\n") == (False, "failed")
    assert score(he, "    while True: pass\n") == (False, "timeout")
    mbpp = Item("mbpp", "y", "p", CODE, tests={"setup": "", "asserts": ["assert sq(3) == 9"]})
    assert score(mbpp, "def sq(x):\n    return x * x")[0] is True
    ife = Item(
        "ifeval",
        "z",
        "p",
        "instructions",
        tests={
            "instruction_ids": ["punctuation:no_comma", "startend:quotation"],
            "kwargs": [{}, {}],
        },
    )
    assert score(ife, '"no commas"') == (True, "2/2 instructions")
    assert score(ife, '"a, b"') == (False, "1/2 instructions")


def test_suites_cover_the_benchmark_families():
    names = {i.benchmark for i in suite_items("tiny")}
    assert {"task/addition", "gsm8k", "mmath", "humaneval", "mbpp", "ifeval"} <= names
    with pytest.raises(ValueError, match="suite"):
        suite_items("huge")


def test_end_to_end_eval_of_tiny_student(tiny_pair, tmp_path):
    student, teacher, tok, _ = tiny_pair
    items = [
        Item("task/addition", str(i), e.prompt, MATH, e.answer, max_new_tokens=4)
        for i, e in enumerate(addition("heldout", 6))
    ]
    items.append(
        Item(
            "mbpp",
            "m",
            "Write sq.",
            CODE,
            tests={"setup": "", "asserts": ["assert sq(2) == 4"]},
            max_new_tokens=8,
        )
    )
    # A prompt longer than the model's context is not generated and counts as wrong.
    items.append(Item("task/addition", "long", "1 + 1 = ? " * 400, MATH, "2", max_new_tokens=4))
    result = evaluate(
        student,
        tok,
        items,
        teacher=teacher,
        generate=lambda prompts, budget: hf_generate(student, tok, prompts, budget),
        log=lambda *_: None,
    )
    summary = result["summary"]
    assert summary["requests"] == 8 and summary["context_overflow"] == 1
    overflowed = result["requests"].pop()
    assert overflowed["correct"] is False and overflowed["response_tokens"] == []
    assert 0.0 < summary["zero_expert_ratio"] < 1.0
    layers = summary["zero_expert_ratio_per_layer"]
    assert set(layers) == {0, 1}
    for req in result["requests"]:
        assert len(req["real_experts_per_token"]) == len(req["response_tokens"])
        assert all(0 <= v <= 2 for v in req["real_experts_per_token"])
        assert req["reverse_kl"] >= 0.0 and 0.0 <= req["top1_agreement"] <= 1.0
    assert summary["reverse_kl"] > 0  # zero experts change the distribution

    paths = write_report(result, tmp_path / "out", "tiny student")
    for key in ("json", "markdown", "layers_png", "tokens_png", "html"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    assert json.loads(paths["json"].read_text())["summary"]["requests"] == 8
    assert "zero-expert ratio" in paths["markdown"].read_text()
    assert "<span class=t" in paths["html"].read_text()


def test_teacher_compared_with_itself_agrees_fully(tiny_pair):
    _, teacher, tok, root = tiny_pair
    masked = AutoModelForCausalLM.from_pretrained(root / "student", mask_zero_experts=True).eval()
    items = [Item("task/addition", "0", "What is 2 + 3?", MATH, "5", max_new_tokens=4)]
    result = evaluate(
        masked,
        tok,
        items,
        teacher=teacher,
        generate=lambda prompts, budget: hf_generate(masked, tok, prompts, budget),
        log=lambda *_: None,
    )
    assert result["summary"]["reverse_kl"] == pytest.approx(0.0, abs=1e-6)
    assert result["summary"]["top1_agreement"] == 1.0
    assert result["summary"]["zero_expert_ratio"] == 0.0


def test_cli_rejects_missing_model(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "zeda_rl.eval", "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert (
        result.returncode == 2
        and "--model" in result.stderr
        and "config.json missing" in result.stderr
    )


@pytest.mark.slow
def test_cli_tiny_suite(tiny_pair, tmp_path):
    import subprocess
    import sys

    _, _, _, root = tiny_pair
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "zeda_rl.eval",
            "--model",
            str(root / "student"),
            "--teacher",
            str(root / "teacher"),
            "--suite",
            "tiny",
            "--out",
            str(tmp_path / "ev"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "ev" / "eval.json").read_text())["summary"]
    # The default backend is vLLM: the ZEDA student is served through the zeda_rl plugin.
    assert {"task/addition", "gsm8k", "humaneval", "mbpp", "mmath", "ifeval", "ifbench"} <= set(
        summary["per_benchmark"]
    )
    assert summary["context_overflow"] >= 0
    assert (tmp_path / "ev" / "tokens.html").is_file()
