"""IFEval instruction checkers on hand-made responses with known verdicts."""

from __future__ import annotations

import pytest

from zeda_rl.data.benchmarks import ifeval
from zeda_rl.eval.instructions import CHECKS, check_instructions, split_sentences

CASES = [
    ("punctuation:no_comma", {}, "No commas here.", "One, two."),
    ("startend:quotation", {}, '"All quoted."', "Not quoted."),
    (
        "startend:end_checker",
        {"end_phrase": "Is there anything else I can help with?"},
        "Done. Is there anything else I can help with?",
        "Done.",
    ),
    (
        "keywords:existence",
        {"keywords": ["river", "stone"]},
        "A Stone in the river.",
        "Only a river.",
    ),
    (
        "keywords:forbidden_words",
        {"forbidden_words": ["cat"]},
        "A catalog of dogs.",
        "The cat sat.",
    ),
    (
        "keywords:frequency",
        {"keyword": "sun", "frequency": 2, "relation": "at least"},
        "sun and Sun",
        "one sun",
    ),
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 2, "let_relation": "less than"},
        "a bz word",
        "zzz",
    ),
    (
        "length_constraints:number_words",
        {"num_words": 5, "relation": "less than"},
        "Just four words here",
        "This has more than five words in it",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 2, "relation": "at least"},
        "First one. Second one!",
        "Only one sentence.",
    ),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 2},
        "Para one.\n***\nPara two.",
        "Para one.\n***\n\n***\nPara two.",
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
        "First part.\n\nThen the second.",
        "First part.\n\nAfter the second.",
    ),
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "Dear [name], at [address].",
        "Dear [name].",
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.S."},
        "Body.\nP.S. remember",
        "Body only.",
    ),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes."),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 2},
        "SECTION 1\nintro\nSECTION 2\nbody",
        "SECTION 1\nintro",
    ),
    (
        "detectable_format:number_bullet_lists",
        {"num_bullets": 2},
        "* one\n* two",
        "* one\n* two\n* three",
    ),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "*one* and *two*",
        "*one* only",
    ),
    ("detectable_format:title", {}, "<<My Title>>\ntext", "My Title\ntext"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "Say hi. Hi!", "Hi!"),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", "Only one answer."),
    (
        "change_case:english_lowercase",
        {},
        "all of this is written in lower case english words",
        "Not All Lower",
    ),
    (
        "change_case:english_capital",
        {},
        "ALL OF THIS IS WRITTEN IN UPPER CASE ENGLISH WORDS",
        "Mixed Case here",
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "THE BIG dog",
        "the BIG dog",
    ),
    (
        "language:response_language",
        {"language": "de"},
        "Das ist ein ganz normaler deutscher Satz über Katzen.",
        "This is an ordinary English sentence about cats.",
    ),
]


@pytest.mark.parametrize(("instruction", "kwargs", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_checker_verdicts(instruction, kwargs, good, bad):
    assert check_instructions(good, [instruction], [kwargs]) == [True]
    assert check_instructions(bad, [instruction], [kwargs]) == [False]


def test_every_ifeval_instruction_has_a_checker():
    ids = {i for item in ifeval() for i in item.tests["instruction_ids"]}
    assert ids == set(CHECKS)
    assert {c[0] for c in CASES} == set(CHECKS)


def test_loose_accepts_markdown_and_framing_lines():
    strict = check_instructions('Sure!\n"Quoted."', ["startend:quotation"], [{}])
    loose = check_instructions('Sure!\n"Quoted."', ["startend:quotation"], [{}], loose=True)
    assert strict == [False] and loose == [True]


def test_sentence_splitter():
    assert split_sentences("Dr. Smith arrived. He sat down! Did he? Yes.") == [
        "Dr. Smith arrived.",
        "He sat down!",
        "Did he?",
        "Yes.",
    ]
    with pytest.raises(KeyError, match="no checker"):
        check_instructions("x", ["made:up"], [{}])
