from __future__ import annotations

import pytest

from tte_recsys.tte.reasoner.prompts import ParsedTrace, get_template, parse_trace


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<think> a  b\n c </think> final line", ParsedTrace("a b c", "final line", None)),
        ("<THINK>x</Think>y", ParsedTrace("x", "y", None)),
        ("just an answer", ParsedTrace("", "just an answer", "no_tags")),
        ("<think> cut off in the midd", ParsedTrace("cut off in the midd", "", "truncated")),
        (
            "reasoning without opening </think> summary",
            ParsedTrace("reasoning without opening", "summary", "no_open_tag"),
        ),
        ("   ", ParsedTrace("", "", "empty")),
        ("<think>a</think> b </think> c", ParsedTrace("a", "b c", None)),
    ],
)
def test_parse_trace_is_robust(raw: str, expected: ParsedTrace) -> None:
    assert parse_trace(raw) == expected


def test_trace_text_joins_reasoning_and_summary() -> None:
    assert parse_trace("<think>x y</think> z").text == "x y z"


def test_templates_are_versioned_and_lookup_lists_names() -> None:
    t = get_template("item_card")
    assert t.key == "item_card@v1"
    msgs = t.messages("title: Heat")
    assert msgs[0]["role"] == "system" and "title: Heat" in msgs[1]["content"]
    with pytest.raises(
        ValueError, match=r"expected one of \['item_card', 'item_keywords', 'mmeb_query', 'mmeb_target'\]"
    ):
        get_template("nope")
