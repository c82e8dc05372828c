"""The query language: documented examples round-trip; errors point at line and column."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from segments import rules
from segments.query_language import parse, to_text

DOC = Path(__file__).resolve().parents[2] / "docs" / "segments.md"


def documented_examples() -> list[str]:
    blocks = re.findall(r"```query\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_the_docs_have_examples():
    assert len(documented_examples()) >= 25


@pytest.mark.parametrize("query", documented_examples())
def test_parse_print_parse_is_the_identity_on_documented_examples(query):
    tree = parse(query)
    assert to_text(tree) == query
    assert parse(to_text(tree)) == tree


def test_keywords_are_case_insensitive_and_spacing_is_free():
    assert parse("number_of_orders>=3 and\n  last_order_date<-90d") == parse(
        "number_of_orders >= 3 AND last_order_date < -90d"
    )


@pytest.mark.parametrize(
    ("query", "line", "column", "message"),
    [
        ("number_of_orders >= 3 AND", 1, 26, "ends too early"),
        ("number_of_orders >> 3", 1, 19, "Unexpected '>'"),
        ("number_of_order >= 3", 1, 1, "Did you mean number_of_orders"),
        ("number_of_orders >= 3 AND\nlast_order_date < -13x", 2, 22, "Unexpected 'x'"),
        ("amount_spent CONTAINS 'x'", 1, 1, "does not take the operator 'contains'"),
        ("last_order_date > 2025-13-01", 1, 1, "is not a date"),
        ("email_subscription_status = 'YES'", 1, 1, "Expected one of SUBSCRIBED"),
        ("products_purchased MATCHES (date > -1y, date < -2y)", 1, 41, "appears twice"),
        ("products_purchased MATCHES (colour = 'blue')", 1, 1, "has no parameter 'colour'"),
        ("customer_tags CONTAINS 3", 1, 1, "non-empty text"),
        ("", 1, 1, "empty"),
    ],
)
def test_errors_point_at_line_and_column(query, line, column, message):
    with pytest.raises(rules.InvalidRule) as caught:
        parse(query)
    problem = caught.value.problems[0]
    assert (problem.line, problem.column) == (line, column), problem
    assert message in problem.message


def test_json_problems_name_their_path():
    tree = {"and": [{"field": "number_of_orders", "op": ">=", "value": 3},
                    {"or": [{"field": "last_order_date", "op": "<", "value": "2025-13-01"}, {"bogus": 1}]}]}
    problems = {p.path: p.message for p in rules.validate(tree)}
    assert set(problems) == {"and[1].or[0].value", "and[1].or[1].field"}
    assert "is not a date" in problems["and[1].or[0].value"]


def test_relative_months_are_calendar_months():
    import datetime as dt

    assert rules.resolve_date("-1m", dt.date(2026, 3, 31)) == dt.date(2026, 2, 28)
    assert rules.resolve_date("-1y", dt.date(2024, 2, 29)) == dt.date(2023, 2, 28)
    assert rules.resolve_date("-2w", dt.date(2026, 11, 22)) == dt.date(2026, 11, 8)
    assert rules.resolve_date("yesterday", dt.date(2026, 1, 1)) == dt.date(2025, 12, 31)
