"""Set expressions over segments: ``(vip | line-linked) - unsubscribed``.

Operators, as in SQL: ``&`` (intersection, also ``∩``) binds tighter than ``|`` (union, ``∪``)
and ``-`` (difference, ``−`` or ``∖``), which read left to right; parentheses group. Operands
are segment slugs of the store, condition segments and lists alike, read from their stored
membership. A hyphen between letters belongs to the slug (``line-linked``); as an operator it
needs a space or a parenthesis next to it.

``parse`` gives a small tree (``{"op": "union", "args": [...]}`` or ``{"segment": slug}``) or
``InvalidRule`` with line and column; ``compile_expression`` turns it into a ``Q`` over Customer.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable

from django.db.models import Q
from django.utils.translation import gettext as _
from lark import Lark, Token, Transformer, UnexpectedEOF, UnexpectedInput

from segments.rules import InvalidRule, RuleProblem

GRAMMAR = r"""
?start: expr
?expr: expr UNION term      -> union
     | expr MINUS term      -> difference
     | term
?term: term INTERSECT atom  -> intersection
     | atom
?atom: SLUG                 -> segment
     | "(" expr ")"

UNION: "|" | "∪"
MINUS: "-" | "−" | "∖"
INTERSECT: "&" | "∩"
SLUG: /[A-Za-z0-9_]+(-[A-Za-z0-9_]+)*/

%import common.WS
%ignore WS
"""

_parser = Lark(GRAMMAR, parser="lalr", propagate_positions=True)

OPERATOR_SYMBOL = {"union": "|", "intersection": "&", "difference": "-"}


class _ToTree(Transformer):
    def __init__(self):
        super().__init__()
        self.positions: dict[str, Token] = {}

    def segment(self, items):
        token = items[0]
        self.positions.setdefault(str(token), token)
        return {"segment": str(token)}

    def _binary(self, op, items):
        left, _symbol, right = items
        # Flatten chains of the same associative operator into one n-ary node.
        args = left["args"] if left.get("op") == op and op != "difference" else [left]
        return {"op": op, "args": [*args, right]}

    def union(self, items):
        return self._binary("union", items)

    def intersection(self, items):
        return self._binary("intersection", items)

    def difference(self, items):
        return self._binary("difference", items)


def parse(text: str, *, segment_exists: Callable[[str], bool] | None = None) -> dict:
    if not text or not text.strip():
        raise InvalidRule([RuleProblem("", _("The expression is empty."), 1, 1)])
    try:
        parsed = _parser.parse(text)
    except UnexpectedInput as exc:
        column = getattr(exc, "column", 0) or 1
        line = getattr(exc, "line", 0) or 1
        if isinstance(exc, UnexpectedEOF) or getattr(getattr(exc, "token", None), "type", "") == "$END":
            lines = text.splitlines() or [""]
            line, column = len(lines), len(lines[-1]) + 1
            message = _("The expression ends too early; expected a segment slug or '('.")
        else:
            message = _("Unexpected input here; write slugs joined by | (union), & (intersection) or "
                        "- (difference), with spaces around -.")
        raise InvalidRule([RuleProblem("", message, line, column)]) from None
    builder = _ToTree()
    tree = builder.transform(parsed)
    if segment_exists is not None:
        problems = [
            RuleProblem("", _("There is no segment %(slug)r in this store.") % {"slug": slug},
                        token.line, token.column)
            for slug, token in builder.positions.items()
            if not segment_exists(slug)
        ]
        if problems:
            raise InvalidRule(problems)
    return tree


def slugs(tree: dict) -> list[str]:
    """The segments an expression reads, in order of first use."""
    if "segment" in tree:
        return [tree["segment"]]
    seen: list[str] = []
    for arg in tree["args"]:
        seen.extend(slug for slug in slugs(arg) if slug not in seen)
    return seen


def to_text(tree: dict) -> str:
    """Canonical text: spaces around operators, every mixed or right-nested group in parentheses."""
    if "segment" in tree:
        return tree["segment"]
    parts = []
    for index, arg in enumerate(tree["args"]):
        text = to_text(arg)
        if "op" in arg and not (index == 0 and arg["op"] == tree["op"]):
            text = f"({text})"
        parts.append(text)
    return f" {OPERATOR_SYMBOL[tree['op']]} ".join(parts)


def compile_expression(tree: dict, member_q: Callable[[str], Q]) -> Q:
    """A ``Q`` over Customer; ``member_q(slug)`` gives "is a member of slug"."""
    if "segment" in tree:
        return member_q(tree["segment"])
    parts = [compile_expression(arg, member_q) for arg in tree["args"]]
    if tree["op"] == "union":
        return functools.reduce(operator.or_, parts)
    if tree["op"] == "intersection":
        return functools.reduce(operator.and_, parts)
    return functools.reduce(lambda left, right: left & ~right, parts)
