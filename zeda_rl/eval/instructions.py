"""IFEval's verifiable instructions, checked offline.

Written here from the instruction definitions of IFEval (Zhou et al., 2023): each
instruction id maps to a check of the response with the prompt's kwargs. Sentences are
split with a regular expression instead of nltk's punkt (which would need a download);
language detection uses ``langdetect``, whose profiles ship inside the package.

``strict`` checks the response as given; ``loose`` also accepts it with markdown emphasis
removed or its first / last line dropped (IFEval's loose variant).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[])")
_ABBREVIATIONS = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|vs|etc|e\.g|i\.e|U\.S)\.\s*$")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after . ! ? before a capital, keeping common abbreviations."""
    pieces = _SENTENCE_END.split(text.strip())
    sentences: list[str] = []
    for piece in pieces:
        if sentences and _ABBREVIATIONS.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        elif piece.strip():
            sentences.append(piece.strip())
    return sentences


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def _compare(count: int, relation: str, target: int) -> bool:
    if relation == "less than":
        return count < target
    if relation == "at least":
        return count >= target
    raise ValueError(f"unknown relation {relation!r}")


def _english(text: str) -> bool:
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0
    try:
        return detect(text) == "en"
    except LangDetectException:
        return True


def _language(text: str, language: str) -> bool:
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0
    try:
        return detect(text) == language
    except LangDetectException:
        return True


def _postscript(text: str, marker: str) -> bool:
    lowered = text.lower()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, lowered, flags=re.MULTILINE))


def _json(text: str) -> bool:
    body = text.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        body = body.removeprefix(fence)
    body = body.removesuffix("```").strip()
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _sections(text: str, splitter: str, num: int) -> bool:
    parts = re.split(r"\s?" + re.escape(splitter) + r"\s?\d+\s?", text)
    return len(parts) - 1 >= num


def _bullets(text: str, num: int) -> bool:
    star = re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE)
    dash = re.findall(r"^\s*-.*$", text, flags=re.MULTILINE)
    return len(star) + len(dash) == num


def _highlights(text: str, num: int) -> bool:
    single = [h for h in re.findall(r"\*[^\n\*]*\*", text) if h.strip("*").strip()]
    double = [
        h
        for h in re.findall(r"\*\*[^\n\*]*\*\*", text)
        if h.removeprefix("**").removesuffix("**").strip()
    ]
    return len(single) + len(double) >= num


def _paragraphs(text: str, num: int) -> bool:
    parts = re.split(r"\s?\*\*\*\s?", text)
    count = len(parts)
    for i, part in enumerate(parts):
        if not part.strip():
            if i in (0, len(parts) - 1):
                count -= 1
            else:
                return False
    return count == num


def _nth_paragraph(text: str, num: int, nth: int, first_word: str) -> bool:
    paragraphs = re.split(r"\n\n", text)
    if sum(1 for p in paragraphs if p.strip()) != num:
        return False
    if nth > len(paragraphs):
        return False
    words = paragraphs[nth - 1].strip().split()
    if not words:
        return False
    word = words[0].strip().lstrip("'\"").rstrip(".,!?;:'\"").lower()
    return word == first_word.lower()


def _two_responses(text: str) -> bool:
    parts = [p.strip() for p in text.split("******")]
    non_empty = [p for p in parts if p]
    return len(non_empty) == 2 and non_empty[0] != non_empty[1] and len(parts) <= 3


CHECKS: dict[str, Callable[..., bool]] = {
    "change_case:capital_word_frequency": lambda r, capital_frequency, capital_relation, **_: (
        _compare(
            sum(1 for w in re.findall(r"\b\w+\b", r) if w.isupper()),
            capital_relation,
            capital_frequency,
        )
    ),
    "change_case:english_capital": lambda r, **_: r.isupper() and _english(r),
    "change_case:english_lowercase": lambda r, **_: r.islower() and _english(r),
    "combination:repeat_prompt": lambda r, prompt_to_repeat, **_: (
        r.strip().lower().startswith(prompt_to_repeat.strip().lower())
    ),
    "combination:two_responses": lambda r, **_: _two_responses(r),
    "detectable_content:number_placeholders": lambda r, num_placeholders, **_: (
        len(re.findall(r"\[.*?\]", r)) >= num_placeholders
    ),
    "detectable_content:postscript": lambda r, postscript_marker, **_: _postscript(
        r, postscript_marker
    ),
    "detectable_format:constrained_response": lambda r, **_: any(
        option in r for option in ("My answer is yes.", "My answer is no.", "My answer is maybe.")
    ),
    "detectable_format:json_format": lambda r, **_: _json(r),
    "detectable_format:multiple_sections": lambda r, section_spliter, num_sections, **_: _sections(
        r, section_spliter, num_sections
    ),
    "detectable_format:number_bullet_lists": lambda r, num_bullets, **_: _bullets(r, num_bullets),
    "detectable_format:number_highlighted_sections": lambda r, num_highlights, **_: _highlights(
        r, num_highlights
    ),
    "detectable_format:title": lambda r, **_: any(
        t.strip("<>").strip() for t in re.findall(r"<<[^\n]+>>", r)
    ),
    "keywords:existence": lambda r, keywords, **_: all(
        re.search(re.escape(k), r, flags=re.IGNORECASE) for k in keywords
    ),
    "keywords:forbidden_words": lambda r, forbidden_words, **_: (
        not any(
            re.search(r"\b" + re.escape(w) + r"\b", r, flags=re.IGNORECASE) for w in forbidden_words
        )
    ),
    "keywords:frequency": lambda r, keyword, frequency, relation, **_: _compare(
        len(re.findall(re.escape(keyword), r, flags=re.IGNORECASE)), relation, frequency
    ),
    "keywords:letter_frequency": lambda r, letter, let_frequency, let_relation, **_: _compare(
        r.lower().count(letter.lower()), let_relation, let_frequency
    ),
    "language:response_language": lambda r, language, **_: _language(r, language),
    "length_constraints:nth_paragraph_first_word": lambda r, num_paragraphs, nth_paragraph, first_word, **_: (
        _nth_paragraph(r, num_paragraphs, nth_paragraph, first_word)
    ),
    "length_constraints:number_paragraphs": lambda r, num_paragraphs, **_: _paragraphs(
        r, num_paragraphs
    ),
    "length_constraints:number_sentences": lambda r, num_sentences, relation, **_: _compare(
        len(split_sentences(r)), relation, num_sentences
    ),
    "length_constraints:number_words": lambda r, num_words, relation, **_: _compare(
        count_words(r), relation, num_words
    ),
    "punctuation:no_comma": lambda r, **_: "," not in r,
    "startend:end_checker": lambda r, end_phrase, **_: (
        r.strip().strip('"').lower().endswith(end_phrase.strip().lower())
    ),
    "startend:quotation": lambda r, **_: (
        len(r.strip()) > 1 and r.strip()[0] == '"' and r.strip()[-1] == '"'
    ),
}


def _loose_variants(response: str) -> list[str]:
    lines = response.split("\n")
    base = [
        response,
        "\n".join(lines[1:]).strip(),
        "\n".join(lines[:-1]).strip(),
        "\n".join(lines[1:-1]).strip(),
    ]
    return base + [v.replace("*", "") for v in base]


def check_instructions(
    response: str,
    instruction_ids: list[str],
    kwargs: list[dict],
    loose: bool = False,
    *,
    checks: dict[str, Callable[..., bool]] | None = None,
    prompt: str | None = None,
    takes_prompt: frozenset[str] = frozenset(),
) -> list[bool]:
    """Per instruction: followed or not. Unknown ids raise (the benchmark must be fully
    covered). ``checks``: the benchmark's checkers (default IFEval's); the ones in
    ``takes_prompt`` also get the ``prompt``."""
    checks = CHECKS if checks is None else checks
    results = []
    for instruction, args in zip(instruction_ids, kwargs, strict=True):
        if instruction not in checks:
            raise KeyError(f"no checker for instruction {instruction!r}")
        args = {k: v for k, v in (args or {}).items() if v is not None}
        if instruction in takes_prompt:
            args["prompt"] = prompt
        candidates = _loose_variants(response) if loose else [response]
        results.append(any(c.strip() and checks[instruction](c, **args) for c in candidates))
    return results
