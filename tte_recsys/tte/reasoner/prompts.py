"""Versioned prompt templates and the robust parser of their ``<think>…</think> summary`` output.

A template's ``version`` is part of the trace-cache key: change the wording, bump the version,
and every cached trace written with the old wording is regenerated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TEMPLATES", "ParsedTrace", "PromptTemplate", "get_template", "parse_trace"]


@dataclass(frozen=True)
class PromptTemplate:
    """A chat prompt: a system message and a user message with ``{content}`` filled per input."""

    name: str
    version: str
    system: str
    user: str

    def messages(self, content: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.format(content=content)},
        ]

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"


_FORMAT = (
    "First think inside <think> and </think> in a few short sentences, then write one summary "
    "line after </think>."
)
TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        PromptTemplate(
            "item_card",
            "v1",
            "You help a recommender system find related items. " + _FORMAT,
            "Item:\n{content}\n\nWhat is this item, what are its key attributes, who engages with it, "
            "and what else would they want next?",
        ),
        # Keywords, not prose: a fused trace vector is the mean-pooled embedding of the trace alone,
        # and product kinds that go together move it toward new partners; "I think" moves it nowhere.
        PromptTemplate(
            "item_keywords",
            "v1",
            "You help a recommender system find related items. Answer with one line of 8 to 12 "
            "comma-separated keywords and nothing else.",
            "Item:\n{content}\n\nList the kinds of products or items someone who engages with this "
            "item also uses or wants next (complements, accessories, same-theme items).",
        ),
        PromptTemplate(
            "mmeb_query",
            "v1",
            "You rewrite search queries so that an embedding model retrieves the right target. " + _FORMAT,
            "Query:\n{content}\n\nWhat is being asked for, and what would the correct target contain?",
        ),
        PromptTemplate(
            "mmeb_target",
            "v1",
            "You describe candidates so that an embedding model matches them to queries. " + _FORMAT,
            "Candidate:\n{content}\n\nWhat does this candidate show or say, and which queries is it the answer to?",
        ),
    )
}


def get_template(name: str) -> PromptTemplate:
    """A template by name; the error lists the valid names."""
    if name not in TEMPLATES:
        raise ValueError(f"reasoner prompt {name!r}: expected one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]


@dataclass(frozen=True)
class ParsedTrace:
    """``thinking`` (inside the tags), ``summary`` (after them), and what was wrong, if anything."""

    thinking: str
    summary: str
    issue: str | None = None

    @property
    def text(self) -> str:
        """What the embedder reads: the reasoning and the summary, tags removed."""
        return " ".join(p for p in (self.thinking, self.summary) if p)


_OPEN, _CLOSE = re.compile(r"<think>", re.I), re.compile(r"</think>", re.I)


def parse_trace(raw: str) -> ParsedTrace:
    """Parse model output; never raises. Issues: ``no_tags``, ``no_open_tag``, ``truncated``, ``empty``."""
    text = raw.strip()
    if not text:
        return ParsedTrace("", "", "empty")
    close = _CLOSE.search(text)
    opened = _OPEN.search(text)
    if close is None:
        if opened is None:
            return ParsedTrace("", " ".join(text.split()), "no_tags")
        # Generation stopped inside the reasoning (max_new_tokens): keep what was written.
        return ParsedTrace(" ".join(text[opened.end() :].split()), "", "truncated")
    start = opened.end() if opened is not None and opened.start() < close.start() else 0
    thinking = " ".join(text[start : close.start()].split())
    summary = " ".join(_OPEN.sub("", _CLOSE.sub("", text[close.end() :])).split())
    issue = None if opened is not None and opened.start() < close.start() else "no_open_tag"
    return ParsedTrace(thinking, summary, issue)


def render_fields(fields: Mapping[str, object]) -> str:
    """``name: value`` lines for the non-empty fields of an item (lists joined by commas)."""
    lines = []
    for k, v in fields.items():
        if isinstance(v, list | tuple):
            v = ", ".join(str(x) for x in v)
        if v is not None and str(v).strip():
            lines.append(f"{k}: {v}")
    return "\n".join(lines)
