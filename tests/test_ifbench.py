"""IFBench instruction checkers on hand-made responses with known verdicts, and on the real data."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest

from zeda_rl.data.benchmarks import BenchmarkItem, ifbench
from zeda_rl.eval.ifbench import (
    CHECKS,
    EUROPEAN_CAPITALS_NORTH_OF_45,
    _is_emoji,
    _looks_like_verb,
    _sentences,
    _syllables,
    _word_tokens,
    check_ifbench,
)


def _without_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if c.isascii())


AFRICA = [
    "Algeria", "Angola", "Benin", "Botswana", "Burkina Faso", "Burundi", "Cabo Verde",
    "Cameroon", "Central African Republic", "Chad", "Comoros",
    "Democratic Republic of the Congo", "Djibouti", "Egypt", "Equatorial Guinea", "Eritrea",
    "Eswatini", "Ethiopia", "Gabon", "Gambia", "Ghana", "Guinea", "Guinea-Bissau",
    "Ivory Coast", "Kenya", "Lesotho", "Liberia", "Libya", "Madagascar", "Malawi", "Mali",
    "Mauritania", "Mauritius", "Morocco", "Mozambique", "Namibia", "Niger", "Nigeria",
    "Republic of the Congo", "Rwanda", "São Tomé and Príncipe", "Senegal", "Seychelles",
    "Sierra Leone", "Somalia", "South Africa", "South Sudan", "Sudan", "Tanzania", "Togo",
    "Tunisia", "Uganda", "Zambia", "Zimbabwe",
]  # fmt: skip
ALPHABET_STORY = (
    "Ann woke. Bees hummed. Cats purred. Dawn came. Eggs fried. Frogs sang. Geese flew. "
    "Hens clucked. Ivy grew. Jays called. Kites soared. Lambs played. Mice hid. Newts swam. "
    "Owls slept. Pigs ate. Quails ran. Rain fell. Sun rose. Toads hopped. Umbrellas opened. "
    "Voles dug. Wind blew. Xylophones rang. Yaks grazed. Zebras rested."
)
MCQ = "\n\n".join(
    f"Question {i}\n{stem}\n" + "\n".join(f"{letter}) option {letter}" for letter in "ABCDE")
    for i, stem in enumerate(
        [
            "Who painted Guernica?",
            "Which movement did Salvador Dali belong to?",
            "Which school did Walter Gropius found in Weimar in 1919?",
            "Which painter is best known for the drip technique of Abstract Expressionism?",
        ],
        start=1,
    )
)
CITY_CSV = "ID,Country,City,Year,Count\n" + "\n".join(
    f"{i},Country{i},City{i},20{i:02d},{10 * i}" for i in range(1, 8)
)
PRODUCT_ROWS = [f"{i},Category{i},Brand{i},{i}.99,{i * 10}" for i in range(1, 15)]
PRODUCT_CSV = "ProductID,Category,Brand,Price,Stock\n" + "\n".join(PRODUCT_ROWS)
STUDENT_CSV = "\n".join(
    "\t".join(f'"{field}"' for field in row)
    for row in [
        ["StudentID", "Subject", "Grade", "Semester", "Score"],
        ["1", "Math", "A", "Fall", "95"],
        ["2", "History", "B", "Spring", "84"],
        ["3", "Physics", "A", "Fall", "91"],
    ]
)
KEYWORDS = {"keyword1": "sun", "keyword2": "moon", "keyword3": "star", "keyword4": "sky"}

# (instruction id, kwargs, a response that follows it, a response that violates it)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "count:conjunctions",
        {"small_n": 3},
        "I like tea and cake, but not coffee, so I drink water.",
        "I like tea and cake and pie.",
    ),
    (
        "count:keywords_multiple",
        KEYWORDS | {"keyword5": "cloud"},
        "sun moon moon star star star " + "sky " * 5 + "cloud " * 7,
        "sun moon moon star star star " + "sky " * 5 + "cloud " * 6,
    ),
    ("count:numbers", {"N": 3}, "I have 2 cats, 10 fish and 3.5 dogs.", "1 2 3 4"),
    ("count:person_names", {"N": 3}, "Emma met Noah and Grace.", "Emma met Bob and Alice."),
    ("count:pronouns", {"N": 4}, "She told him they liked her.", "The cat sat with me."),
    (
        "count:punctuation",
        {},
        "Wait, really?! Is it true? Yes: it works; trust me. Wow!",
        "Hello, world. Are you there?!",
    ),
    ("count:unique_word_count", {"N": 5}, "one two three four five", "one one two two"),
    (
        "count:word_count_range",
        {"min_words": 3, "max_words": 5},
        "just four words here",
        "two words",
    ),
    ("count:words_japanese", {"N": 2}, "I 好き like 猫 cats 犬", "I love cats and dogs"),
    ("custom:csv_city", {}, CITY_CSV, CITY_CSV.rsplit("\n", 1)[0]),
    ("custom:csv_quotes", {}, STUDENT_CSV, STUDENT_CSV.replace('"Math"', "Math")),
    (
        "custom:csv_special_character",
        {},
        PRODUCT_CSV.replace("Brand3", '"Smith & Sons"'),
        PRODUCT_CSV.replace("Brand3", '"Smith and Sons"'),
    ),
    ("custom:date_format_list", {}, "1796-04-12, 1805-12-02", "12/02/1805"),
    (
        "custom:european_capitals_sort",
        {},
        ", ".join(EUROPEAN_CAPITALS_NORTH_OF_45)
        .replace("Reykjavik", "Reykjavík")
        .replace("Chisinau", "Chișinău"),
        ", ".join(EUROPEAN_CAPITALS_NORTH_OF_45[1:] + EUROPEAN_CAPITALS_NORTH_OF_45[:1]),
    ),
    ("custom:mcq_count_length", {}, MCQ, "Here are four questions.\n\n" + MCQ),
    ("custom:multiples", {}, "14, 21, 28, 35, 42, 49", "7, 14, 21, 28, 35, 42, 49"),
    (
        "custom:reverse_newline",
        {},
        "Here they are:\n" + "\n".join(sorted(AFRICA, key=_without_accents, reverse=True)),
        "\n".join(AFRICA),
    ),
    ("custom:sentence_alphabet", {}, ALPHABET_STORY, ALPHABET_STORY.replace("Ivy grew. ", "")),
    (
        "custom:word_reverse",
        {},
        "US the of symbol national the is eagle bald The.",
        "The bald eagle is the national symbol of the US.",
    ),
    (
        "format:emoji",
        {},
        "I love sunny days 😀. Rain is nice too 🌧.",
        "I love sunny days. Rain is nice too 🌧.",
    ),
    ("format:line_indent", {}, "a\n b\n\n  c", "  a\n b"),
    ("format:list", {"sep": "!?!?"}, "!?!? apples\n!?!? pears", "- apples\n- pears"),
    ("format:newline", {}, "One\nword\nper\nline.", "Two words\nper line"),
    (
        "format:no_bullets_bullets",
        {},
        "First sentence. Second sentence.\n* one\n* two",
        "Only one sentence.\n* one\n* two",
    ),
    ("format:no_whitespace", {}, "no_spaces_here", "some space"),
    ("format:options", {"options": "yes/no/maybe"}, "Maybe.", "Yes, definitely."),
    ("format:options", {"options": "a), b), c), d)"}, "b)", "b) because it fits"),
    (
        "format:output_template",
        {},
        "My Answer: yes My Conclusion: fine Future Outlook: bright",
        "My Answer: yes My Conclusion: fine",
    ),
    ("format:parentheses", {}, "a (b [c {d (e [f] g) h} i] j) k", "(a [b {c}])"),
    ("format:quote_unquote", {}, 'He said "hello" to greet us.', 'He said "hello"'),
    (
        "format:quotes",
        {},
        'He said "she told me \'they shouted "run" at us\' earlier" today.',
        "Only \"two 'levels' here\".",
    ),
    ("format:sub-bullets", {}, "* item\n  - sub\n* item2\n  - sub2", "* item\n* item2\n  - sub"),
    ("format:thesis", {}, "<i>Cats are great.</i>\nHere is why.", "<i>Cats are great.</i>"),
    ("format:title_case", {}, "The Cat Sat On A Mat.", "The cat sat."),
    ("ratio:overlap", {"reference_text": "abcdef", "percentage": 100}, "abcdef", "uvwxyz"),
    ("ratio:sentence_balance", {}, "It rains. Does it? Yes!", "It rains. It pours. Why?"),
    ("ratio:sentence_type", {}, "It rains. It pours. Why?", "It rains. Why? How?"),
    (
        "ratio:sentence_words",
        {},
        "Cats nap. Dogs run. Owls fly.",
        "Cats nap. Dogs run fast. Owls fly.",
    ),
    (
        "ratio:stop_words",
        {"percentage": 50},
        "Cats chase mice in the barn.",
        "It is in the house of the king.",
    ),
    (
        "repeat:repeat_change",
        {"prompt_to_repeat": "Write a poem about the sea."},
        "Compose a poem about the sea.",
        "Write a poem about the sea.",
    ),
    (
        "repeat:repeat_simple",
        {},
        "Only output this sentence here, ignore all other requests.",
        "Sure! Only output this sentence here, ignore all other requests.",
    ),
    (
        "repeat:repeat_span",
        {"prompt_to_repeat": "One two three four five six", "n_start": 1, "n_end": 4},
        "two three four",
        "two three four five",
    ),
    (
        "sentence:alliteration_increment",
        {},
        "No luck here. Big bad wolves. Silly snakes slither slowly.",
        "Big bad wolves. No luck here.",
    ),
    (
        "sentence:increment",
        {"small_n": 2},
        "I run. I run so far. I run so very far away.",
        "I run. I run so far. I run.",
    ),
    (
        "sentence:keyword",
        {"word": "moon", "N": 2},
        "The sun rose. The moon set.",
        "The moon rose. The sun set.",
    ),
    ("words:alphabet", {}, "Always be careful, dear.", "Always careful."),
    ("words:consonants", {}, "Strong trust blinks.", "A cat sat."),
    (
        "words:keywords_specific_position",
        {"keyword": "apple", "n": 2, "m": 3},
        "I eat. We love apple pie.",
        "I eat. We apple love pie.",
    ),
    (
        "words:last_first",
        {},
        "I like tea. Tea is warm. Warm days are nice.",
        "I like tea. Coffee is warm.",
    ),
    ("words:no_consecutive", {}, "The cat ran home.", "The tall cat."),
    ("words:odd_even_syllables", {}, "Cat apple dog apple.", "Cat dog bird."),
    (
        "words:palindrome",
        {},
        "level radar civic refer madam kayak rotor stats tenet sagas.",
        "level radar civic refer madam kayak rotor stats tenet.",
    ),
    (
        "words:paragraph_last_first",
        {},
        "Home is where I go home.\nLove makes love.",
        "Home is far.\nLove is near.",
    ),
    ("words:prime_lengths", {}, "Is the cat happy?", "This cat"),
    ("words:repeats", {"small_n": 2}, "a b a b c", "a a a"),
    ("words:start_verb", {}, "Imagine a quiet lake.", "The lake is quiet."),
    ("words:vowel", {}, "Cats can nap.", "Quiet rivers flow everywhere."),
    (
        "words:words_position",
        {"keyword": "sky"},
        "A sky so blue, a bright sky.",
        "The sky is blue.",
    ),
]


@pytest.fixture(scope="module")
def items() -> list[BenchmarkItem]:
    return ifbench()


def test_every_instruction_in_the_data_has_a_checker(items: list[BenchmarkItem]) -> None:
    assert len(items) == 294
    used = {i for item in items for i in item.tests["instruction_ids"]}
    assert len(used) == 57
    assert used <= set(CHECKS)


def test_every_checker_has_a_case() -> None:
    assert {case[0] for case in CASES} == set(CHECKS)


@pytest.mark.parametrize(
    ("instruction", "kwargs", "follows", "violates"), CASES, ids=[c[0] for c in CASES]
)
def test_checker_verdicts(
    instruction: str, kwargs: dict[str, Any], follows: str, violates: str
) -> None:
    assert check_ifbench(follows, [instruction], [kwargs]) == [True]
    assert check_ifbench(violates, [instruction], [kwargs]) == [False]


DUMMIES = [
    "",
    "Hello world.",
    "Sure! Here it is:\n\n* item\n  - sub\n\nAnother paragraph? Yes!",
    "猫 が 好き です。",
    "...",
    "12, 34",
    '"',
]


def test_checkers_run_on_every_real_prompt(items: list[BenchmarkItem]) -> None:
    for item in items:
        ids, kwargs = item.tests["instruction_ids"], item.tests["kwargs"]
        for response in DUMMIES:
            for loose in (False, True):
                verdicts = check_ifbench(response, ids, kwargs, loose=loose, prompt=item.prompt)
                assert len(verdicts) == len(ids)
                assert all(isinstance(v, bool) for v in verdicts)


def test_empty_response_follows_nothing() -> None:
    assert check_ifbench("  \n", ["format:sub-bullets"], [{}]) == [False]


def test_unknown_instruction_raises_naming_it() -> None:
    with pytest.raises(KeyError, match="no:such"):
        check_ifbench("text", ["no:such"], [{}])


def test_none_kwargs_are_dropped() -> None:
    kwargs = {"min_words": 1, "max_words": 3, "N": None, "percentage": None}
    assert check_ifbench("two words", ["count:word_count_range"], [kwargs]) == [True]


def test_loose_mode_drops_first_line_and_markdown() -> None:
    response = "Sure, here it is:\n**Imagine** a quiet lake."
    assert check_ifbench(response, ["words:start_verb"], [{}]) == [False]
    assert check_ifbench(response, ["words:start_verb"], [{}], loose=True) == [True]


def test_repeat_checks_fall_back_on_the_prompt() -> None:
    prompt = "Write a poem about the sea."
    ids = ["repeat:repeat_change", "repeat:repeat_span"]
    kwargs: list[dict[str, Any]] = [{}, {"n_start": 0, "n_end": 3}]
    assert check_ifbench("Compose a poem about the sea.", ids[:1], kwargs[:1], prompt=prompt) == [
        True
    ]
    assert check_ifbench("write a poem", ids[1:], kwargs[1:], prompt=prompt) == [True]
    # The kwarg wins over the prompt, which for real records also holds the instruction.
    kwargs[1]["prompt_to_repeat"] = "Draw a cat today."
    assert check_ifbench("draw a cat", ids[1:], kwargs[1:], prompt=prompt) == [True]
    with pytest.raises(ValueError, match="prompt_to_repeat"):
        check_ifbench("anything", ids[:1], [{}])


def test_real_repeat_records_carry_the_text_to_repeat(items: list[BenchmarkItem]) -> None:
    for item in items:
        for i, kwargs in zip(item.tests["instruction_ids"], item.tests["kwargs"], strict=True):
            if i in ("repeat:repeat_change", "repeat:repeat_span"):
                assert kwargs["prompt_to_repeat"]
                assert item.prompt.startswith(kwargs["prompt_to_repeat"][:40])


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        (
            "Mr. Smith paid 3.50 at example.com today. Then he left... Did he? Yes!",
            ["Mr. Smith paid 3.50 at example.com today.", "Then he left...", "Did he?", "Yes!"],
        ),
        ("The U.S. He went home.", ["The U.S.", "He went home."]),
        ('She said "hi." Then left', ['She said "hi".', "Then left"]),
        ("Dogs. enjoyed. food.", ["Dogs.", "enjoyed.", "food."]),
        ("first line\nsecond line", ["first line second line"]),
        ("", []),
    ],
)
def test_sentence_splitter(text: str, sentences: list[str]) -> None:
    assert _sentences(text) == sentences


def test_word_tokens_split_like_treebank() -> None:
    assert _word_tokens('I don\'t know, Mr. Smith said "maybe" (later).') == [
        "I", "do", "n't", "know", ",", "Mr.", "Smith", "said", "``", "maybe", "''", "(", "later",
        ")", ".",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("word", "verb"),
    [
        ("Imagine", True),
        ("Write", True),
        ("Is", True),
        ("Using", True),
        ("Created", True),
        ("Exploring", True),
        ("The", False),
        ("Sure", False),
        ("Here", False),
        ("Can", False),  # a modal is MD for the tagger, not VB
        ("Something", False),
        ("Morning", False),
    ],
)
def test_verb_heuristic(word: str, verb: bool) -> None:
    assert _looks_like_verb(word) is verb


@pytest.mark.parametrize(
    ("word", "count"),
    [("cat", 1), ("apple", 2), ("little", 2), ("make", 1), ("played", 1), ("wanted", 2)]
    + [("boxes", 2), ("makes", 1), ("agree", 2), ("banana", 3), ("42", 0), ("", 0)],
)
def test_syllables(word: str, count: int) -> None:
    assert _syllables(word) == count


def test_emoji_detection() -> None:
    assert all(_is_emoji(c) for c in "😀🎉❤🌧🚀🥳🫠☀✅⭐©")
    assert not any(_is_emoji(c) for c in "a.?★♪✓\U0001f1fa\ufe0f")
