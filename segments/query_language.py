"""The text form of a rule, after Shopify's segment query language.

``parse`` turns text into the rule tree of ``segments.rules`` (checked, with problems located by
line and column); ``to_text`` prints a tree back. ``parse(to_text(tree)) == tree`` for every
normalised tree, which the tests assert on every documented example.

    number_of_orders >= 3 AND last_order_date < -90d
    products_purchased MATCHES (tag = 'tea', date > -1y, count >= 3)
    customer_tags CONTAINS 'LINE連携' AND NOT in_segment('vip')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.utils.translation import gettext as _
from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from segments.rules import FIELDS, PARAMS, InvalidRule, RuleProblem, normalize, validate

GRAMMAR = r"""
?start: or_expr

?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: _NOT not_expr          -> negation
         | "(" or_expr ")"
         | condition

condition: NAME OP value                          -> compare
         | NAME _BETWEEN value _AND value         -> between
         | NAME _IS _NULL                         -> is_null
         | NAME _IS _NOT _NULL                    -> is_not_null
         | NAME _CONTAINS value                   -> contains
         | NAME _NOT _CONTAINS value              -> not_contains
         | NAME _MATCHES "(" [params] ")"         -> matches
         | NAME _NOT _MATCHES "(" [params] ")"    -> not_matches
         | NAME "(" value ")"                     -> call

params: param ("," param)*
param: NAME OP value                              -> param_compare
     | NAME _BETWEEN value _AND value             -> param_between
     | NAME _IN "(" value ("," value)* ")"        -> param_in

?value: STRING       -> string
      | NUMBER       -> number
      | DATE         -> date
      | RELATIVE     -> date
      | TODAY        -> date
      | YESTERDAY    -> date

_OR.4: /OR\b/i
_AND.4: /AND\b/i
_NOT.4: /NOT\b/i
_BETWEEN.4: /BETWEEN\b/i
_IS.4: /IS\b/i
_NULL.4: /NULL\b/i
_CONTAINS.4: /CONTAINS\b/i
_MATCHES.4: /MATCHES\b/i
_IN.4: /IN\b/i
TODAY.2: /today\b/i
YESTERDAY.2: /yesterday\b/i

NAME: /[a-z_][a-z0-9_.]*/i
OP: "!=" | ">=" | "<=" | "=" | ">" | "<"
DATE.3: /\d{4}-\d{2}-\d{2}/
RELATIVE.3: /[+-]\d+[dwmy]\b/
NUMBER.2: /-?\d+(\.\d+)?/
STRING: /'(?:[^'\\]|\\.)*'/ | /"(?:[^"\\]|\\.)*"/

%import common.WS
%ignore WS
"""

KEYWORDS = {"OR", "AND", "NOT", "BETWEEN", "IS", "NULL", "CONTAINS", "MATCHES", "IN"}
_parser = Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)

TERMINAL_NAMES = {
    "NAME": "an attribute", "OP": "an operator (= != > >= < <=)", "STRING": "a quoted text",
    "NUMBER": "a number", "DATE": "a date", "RELATIVE": "a relative date (-90d)", "TODAY": "today",
    "YESTERDAY": "yesterday", "LPAR": "'('", "RPAR": "')'", "COMMA": "','", "_AND": "AND", "_OR": "OR",
    "_NOT": "NOT", "_BETWEEN": "BETWEEN", "_IS": "IS", "_NULL": "NULL", "_CONTAINS": "CONTAINS",
    "_MATCHES": "MATCHES", "_IN": "IN", "$END": "the end of the query",
}


class _ToTree(Transformer):
    """Parse tree → rule tree; remembers where each condition started for error messages."""

    def __init__(self):
        super().__init__()
        self.positions: dict[int, tuple[int, int]] = {}

    def _at(self, meta, node: dict) -> dict:
        self.positions[id(node)] = (meta.line, meta.column)
        return node

    @v_args(inline=True)
    def string(self, token: Token) -> str:
        body = token[1:-1]
        out, escaped = [], False
        for char in body:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            else:
                out.append(char)
        return "".join(out)

    @v_args(inline=True)
    def number(self, token: Token) -> int | float:
        return float(token) if "." in token else int(token)

    @v_args(inline=True)
    def date(self, token: Token) -> str:
        text = str(token)
        return text.lower() if text.lower() in ("today", "yesterday") else text

    def or_expr(self, children):
        return {"or": list(children)}

    def and_expr(self, children):
        return {"and": list(children)}

    def negation(self, children):
        return {"not": children[0]}

    @v_args(meta=True)
    def compare(self, meta, children):
        name, op, value = children
        return self._at(meta, {"field": str(name), "op": str(op), "value": value})

    @v_args(meta=True)
    def between(self, meta, children):
        name, low, high = children
        return self._at(meta, {"field": str(name), "op": "between", "value": [low, high]})

    @v_args(meta=True)
    def is_null(self, meta, children):
        return self._at(meta, {"field": str(children[0]), "op": "is_null"})

    @v_args(meta=True)
    def is_not_null(self, meta, children):
        return self._at(meta, {"field": str(children[0]), "op": "is_not_null"})

    @v_args(meta=True)
    def contains(self, meta, children):
        return self._at(meta, {"field": str(children[0]), "op": "contains", "value": children[1]})

    @v_args(meta=True)
    def not_contains(self, meta, children):
        return self._at(meta, {"field": str(children[0]), "op": "not_contains", "value": children[1]})

    @v_args(meta=True)
    def matches(self, meta, children):
        params = children[1] if len(children) > 1 else {}
        return self._at(meta, {"field": str(children[0]), "op": "matches", "params": params})

    @v_args(meta=True)
    def not_matches(self, meta, children):
        params = children[1] if len(children) > 1 else {}
        return self._at(meta, {"field": str(children[0]), "op": "not_matches", "params": params})

    @v_args(meta=True)
    def call(self, meta, children):
        return self._at(meta, {"field": str(children[0]), "op": "=", "value": children[1]})

    def params(self, children):
        result: dict[str, Any] = {}
        for token, param in children:
            name = str(token)
            if name in result:
                raise _LocatedError(token, _("The parameter %(name)s appears twice; use BETWEEN for a range.")
                                    % {"name": name})
            result[name] = param
        return result

    def param_compare(self, children):
        name, op, value = children
        return name, {"op": str(op), "value": value}

    def param_between(self, children):
        name, low, high = children
        return name, {"op": "between", "value": [low, high]}

    def param_in(self, children):
        name, *values = children
        return name, {"op": "in", "value": values}


class _LocatedError(Exception):
    def __init__(self, token: Token, message: str):
        self.token, self.message = token, message


def parse(text: str, *, segment_exists: Callable[[str], bool] | None = None) -> dict:
    """The normalised rule tree of ``text``; ``InvalidRule`` with located problems otherwise."""
    if not text or not text.strip():
        raise InvalidRule([RuleProblem("", _("The query is empty."), 1, 1)])
    try:
        parsed = _parser.parse(text)
    except UnexpectedInput as exc:
        raise InvalidRule([_syntax_problem(text, exc)]) from None
    builder = _ToTree()
    try:
        tree = builder.transform(parsed)
    except VisitError as exc:
        located = exc.orig_exc
        if isinstance(located, _LocatedError):
            problem = RuleProblem("", located.message, located.token.line, located.token.column)
            raise InvalidRule([problem]) from None
        raise
    problems = validate(tree, segment_exists=segment_exists, positions=builder.positions)
    if problems:
        raise InvalidRule(problems)
    return normalize(tree)


def _syntax_problem(text: str, exc: UnexpectedInput) -> RuleProblem:
    line, column = exc.line, exc.column
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
        expected = _expected(exc)
        return RuleProblem("", _("The query ends too early; expected %(expected)s.") % {"expected": expected},
                           line, column)
    if isinstance(exc, UnexpectedCharacters):
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else ""
        return RuleProblem("", _("Unexpected character %(char)r.") % {"char": char}, line, column)
    token = getattr(exc, "token", None)
    got = str(token) if token is not None else "?"
    return RuleProblem("", _("Unexpected %(got)r; expected %(expected)s.") % {"got": got, "expected": _expected(exc)},
                       line, column)


def _expected(exc: UnexpectedInput) -> str:
    names = sorted({TERMINAL_NAMES.get(name, name) for name in (getattr(exc, "expected", None) or [])})
    return ", ".join(names) or "more"


# ---------------------------------------------------------------------------------------------
# Printing


def to_text(tree: dict) -> str:
    """The query text of a (normalised) rule tree."""
    return _print(normalize(tree), top=True)


def _print(node: dict, top: bool = False, parent: str = "") -> str:
    for key in ("and", "or"):
        if key in node:
            text = f" {key.upper()} ".join(_print(child, parent=key) for child in node[key])
            # AND binds tighter than OR, so an AND group directly inside an OR needs no parentheses.
            return text if top or (key == "and" and parent == "or") else f"({text})"
    if "not" in node:
        return f"NOT {_print(node['not'])}"
    return _print_condition(node)


def _print_condition(node: dict) -> str:
    name, op = node["field"], node["op"]
    kind = FIELDS[name].kind if name in FIELDS else "string"
    if kind == "segment":
        return f"{name}({_value(node['value'], 'string')})"
    if op in ("matches", "not_matches"):
        params = ", ".join(_print_param(pname, param, name) for pname, param in node["params"].items())
        return f"{name} {'MATCHES' if op == 'matches' else 'NOT MATCHES'} ({params})"
    if op == "is_null":
        return f"{name} IS NULL"
    if op == "is_not_null":
        return f"{name} IS NOT NULL"
    if op == "between":
        low, high = node["value"]
        return f"{name} BETWEEN {_value(low, kind)} AND {_value(high, kind)}"
    if op in ("contains", "not_contains"):
        return f"{name} {'CONTAINS' if op == 'contains' else 'NOT CONTAINS'} {_value(node['value'], kind)}"
    return f"{name} {op} {_value(node['value'], kind)}"


def _print_param(name: str, param: dict, function: str) -> str:
    spec = PARAMS.get(function, {}).get(name)
    kind = spec.kind if spec else "string"
    op, value = param["op"], param["value"]
    if op == "between":
        return f"{name} BETWEEN {_value(value[0], kind)} AND {_value(value[1], kind)}"
    if op == "in":
        return f"{name} IN ({', '.join(_value(v, kind) for v in value)})"
    return f"{name} {op} {_value(value, kind)}"


def _value(value: Any, kind: str) -> str:
    if kind == "date" and isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "'true'" if value else "'false'"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"
