"""The rule tree: what it may contain, how it is checked, and how it becomes SQL.

A rule is JSON (docs/segments.md has the full reference)::

    {"and": [node, ...]}   {"or": [node, ...]}   {"not": node}
    {"field": "number_of_orders", "op": ">=", "value": 3}
    {"field": "last_order_date", "op": "between", "value": ["-90d", "today"]}
    {"field": "products_purchased", "op": "matches",
     "params": {"tag": {"op": "=", "value": "tea"}, "count": {"op": ">=", "value": 3}}}
    {"field": "in_segment", "op": "=", "value": "vip"}

``validate`` reports every problem with its path in the tree (``and[1].params.date.value``).
``compile_rule`` turns a valid tree into a ``Q`` over ``Customer`` made only of plain lookups and
``pk IN (subquery)`` semi-joins, so it runs unchanged on PostgreSQL and SQLite and every
condition is two-valued (``NOT`` of a condition is exactly the customers it does not match).

Semantics: only counted orders count (not cancelled, not test; they carry an ``ordinal``);
dates are calendar days in the store's time zone; relative dates count back from the evaluation
date; ``BETWEEN`` is inclusive. Evaluated as of a past day, only orders created on or before it
count and only customers added by then (when Shopify told us when) are considered.

This module does not read the database: it builds lazy querysets. Other segments are reached
through ``EvaluationContext.segment`` so callers decide how ``in_segment`` resolves.
"""

from __future__ import annotations

import calendar
import datetime as dt
import difflib
import operator
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connection
from django.db.models import (
    BooleanField,
    Count,
    DecimalField,
    Exists,
    ExpressionWrapper,
    F,
    Func,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Sum,
    Value,
)
from django.db.models.expressions import RawSQL
from django.db.models.functions import Round
from django.utils.translation import gettext as _

from ecpower.commerce.models import (
    Customer,
    CustomerTag,
    CustomerTagEvent,
    LineItem,
    MarketingState,
    Order,
    TagEventAction,
)
from segments import rfm

MAX_CONDITIONS = 100
MAX_DEPTH = 12
MAX_LIST_VALUES = 500

COMPARISONS = ("=", "!=", ">", ">=", "<", "<=")
NUMBER_OPS = (*COMPARISONS, "between")
DATE_OPS = (*COMPARISONS, "between", "is_null", "is_not_null")
STRING_OPS = ("=", "!=", "is_null", "is_not_null")
LIST_OPS = ("contains", "not_contains")
ENUM_OPS = ("=", "!=")
FUNCTION_OPS = ("matches", "not_matches")

RELATIVE_DATE = re.compile(r"^([+-])(\d{1,5})([dwmy])$")
ABSOLUTE_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Spec:
    """One attribute (or function parameter): its value type and the operators it accepts."""

    kind: str  # integer | decimal | date | string | enum | list | function | segment
    ops: tuple[str, ...]
    choices: tuple[str, ...] = ()
    nullable: bool = False


FIELDS: dict[str, Spec] = {
    "number_of_orders": Spec("integer", NUMBER_OPS),
    "amount_spent": Spec("decimal", NUMBER_OPS),
    "average_order_value": Spec("decimal", (*NUMBER_OPS, "is_null", "is_not_null"), nullable=True),
    "first_order_date": Spec("date", DATE_OPS, nullable=True),
    "last_order_date": Spec("date", DATE_OPS, nullable=True),
    "customer_added_date": Spec("date", DATE_OPS, nullable=True),
    "customer_tags": Spec("list", LIST_OPS),
    "customer_countries": Spec("list", LIST_OPS),
    "customer_regions": Spec("list", LIST_OPS),
    "customer_cities": Spec("list", LIST_OPS),
    "email_subscription_status": Spec("enum", ENUM_OPS, choices=tuple(MarketingState.values)),
    "sms_subscription_status": Spec("enum", ENUM_OPS, choices=tuple(MarketingState.values)),
    "first_order_discount_code": Spec("string", STRING_OPS, nullable=True),
    "first_order_source": Spec("string", STRING_OPS, nullable=True),
    "first_order_utm_source": Spec("string", STRING_OPS, nullable=True),
    "first_order_utm_medium": Spec("string", STRING_OPS, nullable=True),
    "first_order_utm_campaign": Spec("string", STRING_OPS, nullable=True),
    "products_purchased": Spec("function", FUNCTION_OPS),
    "orders_placed": Spec("function", FUNCTION_OPS),
    "rfm_group": Spec("enum", ENUM_OPS, choices=rfm.GROUPS),
    # Read from partner tags (AiTrillion) by the store's tag mappings (integrations/aitrillion).
    "loyalty_tier": Spec("string", STRING_OPS, nullable=True),
    "membership_plan": Spec("string", STRING_OPS, nullable=True),
    "affiliate_group": Spec("string", STRING_OPS, nullable=True),
    "signup_source": Spec("string", STRING_OPS, nullable=True),
    "in_segment": Spec("segment", ("=",)),
}

MATCH_OPS = ("=", "in")
PARAMS: dict[str, dict[str, Spec]] = {
    "products_purchased": {
        "id": Spec("integer", MATCH_OPS),
        "sku": Spec("string", MATCH_OPS),
        "product_type": Spec("string", MATCH_OPS),
        "vendor": Spec("string", MATCH_OPS),
        "tag": Spec("string", MATCH_OPS),
        "date": Spec("date", NUMBER_OPS),
        "order_number": Spec("integer", NUMBER_OPS),
        "count": Spec("integer", NUMBER_OPS),
        "sum_quantity": Spec("integer", NUMBER_OPS),
    },
    "orders_placed": {
        "date": Spec("date", NUMBER_OPS),
        "amount": Spec("decimal", NUMBER_OPS),
        "discount_code": Spec("string", MATCH_OPS),
        "source": Spec("string", MATCH_OPS),
        "utm_campaign": Spec("string", MATCH_OPS),
        "count": Spec("integer", NUMBER_OPS),
        "sum_amount": Spec("decimal", NUMBER_OPS),
    },
}
AGGREGATE_PARAMS = {"count", "sum_quantity", "sum_amount"}
NO_ID = -1  # stands in for an empty id list: "IN ()" is not SQL
MAPPED_ATTRIBUTES = ("loyalty_tier", "membership_plan", "affiliate_group", "signup_source")


# ---------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class RuleProblem:
    path: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}, column {self.column}" if self.line else (self.path or "rule")
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "message": self.message, "line": self.line, "column": self.column}


class InvalidRule(ValueError):
    def __init__(self, problems: list[RuleProblem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


# ---------------------------------------------------------------------------------------------
# Validation


def validate(
    tree: Any,
    *,
    segment_exists: Callable[[str], bool] | None = None,
    positions: dict[int, tuple[int, int]] | None = None,
) -> list[RuleProblem]:
    """Every problem of ``tree``, each with its path (and line/column when parsed from text)."""
    problems: list[RuleProblem] = []
    counter = [0]
    positions = positions or {}

    def problem(node: Any, path: str, message: str) -> None:
        line, column = positions.get(id(node), (None, None))
        problems.append(RuleProblem(path, message, line, column))

    def walk(node: Any, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            problem(node, path, _("Groups are nested more than %(n)d deep.") % {"n": MAX_DEPTH})
            return
        if not isinstance(node, dict):
            problem(node, path, _("Expected an object (a group or a condition)."))
            return
        groups = [key for key in ("and", "or", "not") if key in node]
        if groups:
            key = groups[0]
            if len(node) != 1:
                problem(node, path, _("A group has exactly one key: and, or or not."))
                return
            here = f"{path}.{key}" if path else key
            if key == "not":
                walk(node["not"], here, depth + 1)
                return
            children = node[key]
            if not isinstance(children, list) or not children:
                problem(node, here, _("Expected a non-empty list of conditions."))
                return
            for index, child in enumerate(children):
                walk(child, f"{here}[{index}]", depth + 1)
            return
        counter[0] += 1
        _validate_condition(node, path, problem, segment_exists)

    walk(tree, "", 0)
    if counter[0] > MAX_CONDITIONS:
        problems.append(RuleProblem("", _("At most %(n)d conditions per rule.") % {"n": MAX_CONDITIONS}))
    return problems


def _validate_condition(node: dict, path: str, problem, segment_exists) -> None:
    name = node.get("field")
    prefix = f"{path}." if path else ""
    if name not in FIELDS:
        problem(node, f"{prefix}field", _unknown(_("Unknown attribute %(name)r.") % {"name": name}, name, FIELDS))
        return
    spec = FIELDS[name]
    op = node.get("op")
    if op not in spec.ops:
        problem(node, f"{prefix}op", _("%(name)s does not take the operator %(op)r; use one of %(ops)s.")
                % {"name": name, "op": op, "ops": ", ".join(_op_label(o) for o in spec.ops)})
        return
    allowed = {"field", "op", "params"} if spec.kind == "function" else {"field", "op", "value"}
    extra = set(node) - allowed
    if extra:
        problem(node, prefix + sorted(extra)[0], _("Unexpected key %(key)r.") % {"key": sorted(extra)[0]})
    if spec.kind == "function":
        params = node.get("params")
        if not isinstance(params, dict):
            problem(node, f"{prefix}params", _("Expected an object of parameters."))
            return
        specs = PARAMS[name]
        for pname, pnode in params.items():
            ppath = f"{prefix}params.{pname}"
            if pname not in specs:
                problem(node, ppath, _("%(fn)s has no parameter %(name)r; it takes %(known)s.")
                        % {"fn": name, "name": pname, "known": ", ".join(specs)})
                continue
            if not isinstance(pnode, dict) or pnode.get("op") not in specs[pname].ops:
                ops = ", ".join(_op_label(o) for o in specs[pname].ops)
                problem(node, f"{ppath}.op", _("%(name)s takes one of %(ops)s.") % {"name": pname, "ops": ops})
                continue
            _validate_value(node, f"{ppath}.value", specs[pname], pnode["op"], pnode.get("value"), problem)
        return
    if op in ("is_null", "is_not_null"):
        if "value" in node:
            problem(node, f"{prefix}value", _("IS NULL takes no value."))
        return
    if spec.kind == "segment":
        slug = node.get("value")
        if not isinstance(slug, str) or not slug:
            problem(node, f"{prefix}value", _("Expected the slug of a segment."))
        elif segment_exists is not None and not segment_exists(slug):
            problem(node, f"{prefix}value", _("There is no segment %(slug)r in this store.") % {"slug": slug})
        return
    _validate_value(node, f"{prefix}value", spec, op, node.get("value"), problem)


def _validate_value(node, path: str, spec: Spec, op: str, value: Any, problem) -> None:
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            problem(node, path, _("BETWEEN takes two values."))
            return
        for index, item in enumerate(value):
            _validate_scalar(node, f"{path}[{index}]", spec, item, problem)
        return
    if op == "in":
        if not isinstance(value, list) or not value:
            problem(node, path, _("IN takes a non-empty list of values."))
            return
        if len(value) > MAX_LIST_VALUES:
            problem(node, path, _("IN takes at most %(n)d values.") % {"n": MAX_LIST_VALUES})
            return
        for index, item in enumerate(value):
            _validate_scalar(node, f"{path}[{index}]", spec, item, problem)
        return
    _validate_scalar(node, path, spec, value, problem)


def _validate_scalar(node, path: str, spec: Spec, value: Any, problem) -> None:
    kind = spec.kind
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            problem(node, path, _("Expected a whole number, got %(value)r.") % {"value": value})
        elif value < 0:
            problem(node, path, _("Expected a number of 0 or more."))
    elif kind == "decimal":
        if isinstance(value, bool) or not isinstance(value, int | float):
            problem(node, path, _("Expected a number, got %(value)r.") % {"value": value})
    elif kind == "date":
        try:
            parse_date_value(value)
        except ValueError as exc:
            problem(node, path, str(exc))
    elif kind == "enum":
        if value not in spec.choices:
            problem(node, path, _("Expected one of %(choices)s, got %(value)r.")
                    % {"choices": ", ".join(spec.choices), "value": value})
    elif not isinstance(value, str) or not value.strip():
        problem(node, path, _("Expected a non-empty text value."))


def _unknown(message: str, name: Any, known) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1)
    if close:
        return message + " " + _("Did you mean %(name)s?") % {"name": close[0]}
    return message + " " + _("See docs/segments.md for the attributes.")


def _op_label(op: str) -> str:
    return op.upper().replace("_", " ")


def check(tree: Any, *, segment_exists: Callable[[str], bool] | None = None) -> dict:
    """``tree`` normalised, or ``InvalidRule`` with every problem."""
    problems = validate(tree, segment_exists=segment_exists)
    if problems:
        raise InvalidRule(problems)
    return normalize(tree)


def normalize(tree: dict) -> dict:
    """Single-child groups unwrapped; the canonical form stored and printed."""
    if "and" in tree or "or" in tree:
        key = "and" if "and" in tree else "or"
        children = [normalize(child) for child in tree[key]]
        return children[0] if len(children) == 1 else {key: children}
    if "not" in tree:
        return {"not": normalize(tree["not"])}
    return tree


def iter_conditions(tree: dict, path: str = "") -> Iterator[tuple[str, dict]]:
    """(path, condition) for every condition of a valid tree, in reading order."""
    for key in ("and", "or"):
        if key in tree:
            here = f"{path}.{key}" if path else key
            for index, child in enumerate(tree[key]):
                yield from iter_conditions(child, f"{here}[{index}]")
            return
    if "not" in tree:
        yield from iter_conditions(tree["not"], f"{path}.not" if path else "not")
        return
    yield path, tree


def referenced_segments(tree: dict) -> set[str]:
    return {cond["value"] for _path, cond in iter_conditions(tree) if cond.get("field") == "in_segment"}


# The Customer columns conditions read (besides the store and the orders, lines and tags): a change to
# any of them can change a verdict (segments.changes digests them to find who changed).
CUSTOMER_COLUMNS = (
    "orders_count", "amount_spent", "average_order_value", "first_order_at", "last_order_at",
    "shopify_created_at", "country_code", "province_code", "city", "email_marketing", "sms_marketing",
    "first_order_discount_code", "first_order_source", "first_order_utm_source", "first_order_utm_medium",
    "first_order_utm_campaign",
)


def date_tests(tree: dict) -> Iterator[tuple[str, str, str]]:
    """(field, value, op) of every date comparison in a valid tree, attributes and function parameters
    alike; each end of a BETWEEN is given with the op ``between``."""
    for _path, condition in iter_conditions(tree):
        tests = []
        if FIELDS[condition["field"]].kind == "date":
            tests.append((condition["op"], condition.get("value")))
        for name, param in (condition.get("params") or {}).items():
            if name == "date":
                tests.append((param["op"], param["value"]))
        for op, value in tests:
            if op in ("is_null", "is_not_null"):
                continue
            for item in (value if op == "between" else [value]):
                yield condition["field"], item, op


def store_wide(tree: dict) -> bool:
    """Whether one customer's verdict can change when other customers change (RFM's store quintiles)."""
    return any(c["field"] == "rfm_group" and c.get("value") != "PROSPECTS" for _path, c in iter_conditions(tree))


def reads_orders(tree: dict) -> bool:
    """Whether the rule aggregates orders or line items (the expensive conditions on a large store)."""
    return any(FIELDS[c["field"]].kind == "function" for _path, c in iter_conditions(tree))


def reads_tags(tree: dict) -> bool:
    return any(c["field"] == "customer_tags" or c["field"] in MAPPED_ATTRIBUTES for _path, c in iter_conditions(tree))


# ---------------------------------------------------------------------------------------------
# Dates


def parse_date_value(value: Any) -> tuple[str, Any]:
    """('absolute', date) | ('relative', (sign, n, unit)) | ('today'|'yesterday', None)."""
    if not isinstance(value, str):
        raise ValueError(_("Expected a date such as 2025-03-01, -90d, today or yesterday."))
    text = value.strip().lower()
    if text in ("today", "yesterday"):
        return text, None
    match = RELATIVE_DATE.match(text)
    if match:
        sign, number, unit = match.groups()
        return "relative", (-1 if sign == "-" else 1, int(number), unit)
    if ABSOLUTE_DATE.match(text):
        try:
            return "absolute", dt.date.fromisoformat(text)
        except ValueError:
            pass
    raise ValueError(_("%(value)r is not a date: use 2025-03-01, -90d, -2w, -3m, -1y, today or yesterday.")
                     % {"value": value})


def resolve_date(value: str, as_of: dt.date) -> dt.date:
    """The calendar day ``value`` names when evaluating on ``as_of``."""
    kind, data = parse_date_value(value)
    if kind == "absolute":
        return data
    if kind == "today":
        return as_of
    if kind == "yesterday":
        return as_of - dt.timedelta(days=1)
    sign, number, unit = data
    if unit == "d":
        return as_of + dt.timedelta(days=sign * number)
    if unit == "w":
        return as_of + dt.timedelta(weeks=sign * number)
    months = sign * number * (12 if unit == "y" else 1)
    index = as_of.year * 12 + as_of.month - 1 + months
    year, month = divmod(index, 12)
    day = min(as_of.day, calendar.monthrange(year, month + 1)[1])
    return dt.date(year, month + 1, day)


@dataclass(frozen=True)
class DayRange:
    """A set of calendar days as half-open datetime bounds (either may be open)."""

    start: dt.datetime | None
    end: dt.datetime | None


# ---------------------------------------------------------------------------------------------
# Compilation


@dataclass
class EvaluationContext:
    """Where and when a rule is evaluated.

    ``segment(slug)`` returns the referenced segment; ``in_segment`` reads its stored membership
    when evaluating today and its rule (inlined) when evaluating a past day, because stored
    membership only describes today.
    """

    store: Any
    as_of: dt.date
    today: dt.date
    segment: Callable[[str], Any]
    # ("id" | "tag" | "product_type" | "vendor", values) → ids of the store's products with one of those
    # Shopify ids / tags / types / vendors (case-insensitive). Given as literals, the planner sees how
    # many line items they select (a subquery over product tags hides it and gets nested loops over
    # millions of rows), and products are never joined.
    product_ids: Callable[[str, list], list[int]]
    # When the store's tag history starts (its first CustomerTagEvent); None when it has none.
    tag_history_start: dt.datetime | None = None
    # What an as-of evaluation had to approximate ("tags_before_history", "tags_without_history").
    notes: set[str] = field(default_factory=set)
    # attribute → {value: tag names mapping to it}, from the store's tag mappings (partner attributes).
    tag_values: Callable[[str], dict[str, set[str]]] | None = None
    # Only these customers are evaluated (an SQL subquery of ids, or the ids themselves: the customers an
    # order touched): every subquery over orders, line items, tags and memberships is restricted to them
    # too, so an incremental update reads their rows instead of aggregating the whole store.
    scope: RawSQL | Sequence[int] | None = None
    # slug → SQL selecting that segment's members on the evaluation day when the caller has them already
    # (the snapshot walk evaluates segments in dependency order into a table); else None, and a
    # past day's in_segment inlines the referenced rule.
    evaluated: Callable[[str], RawSQL | None] | None = None
    # A table (customer_id, n, spent, first_at, last_at) of counted orders' aggregates as of the end of
    # the evaluation day, one row per buyer, filled by the caller. A past day's order-count, amount,
    # AOV and last-order conditions then read it instead of aggregating orders once per condition.
    facts_table: str | None = None
    # in_segment of a condition segment compiles its rule inline instead of reading its stored membership
    # (as a past day's does): for an evaluation of every condition segment for the same customers at once
    # (customers_segments_recompute), where the referenced segment's membership of those customers is
    # about to become its rule's verdict.
    inline_segments: bool = False
    # Set while one statement evaluates several rules (``verdict_rows``): their ``products_purchased``
    # conditions then read one pass over the line items instead of one each (``LineSummary``).
    line_summary: LineSummary | None = None
    # Whether every counted order of the store knows its products (``Order.product_ids``), asked only of a
    # rule that could read them instead of the line items (``_ordered_products``); None: never.
    order_products_known: Callable[[], bool] | None = None
    # Only customers with ids in [low, high) are evaluated: one of the parts of a count split over
    # several connections (selectors.segment_preview); every subquery led by the customer reads its part.
    id_range: tuple[int, int] | None = None
    _stack: list[str] = field(default_factory=list)

    @property
    def historical(self) -> bool:
        return self.as_of < self.today

    def start_of(self, day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time.min, tzinfo=self.store.zone)

    @property
    def cutoff(self) -> dt.datetime:
        """Orders created before this instant count: the end of the evaluation day."""
        return self.start_of(self.as_of + dt.timedelta(days=1))

    def date(self, value: str) -> dt.date:
        return resolve_date(value, self.as_of)


def universe(context: EvaluationContext) -> QuerySet:
    """The store's customers as of the evaluation day (only those in scope when the context has one)."""
    customers = _scoped(Customer.objects.filter(store=context.store), "pk", context)
    if context.historical:
        customers = customers.exclude(shopify_created_at__gte=context.cutoff)
    return customers


class _IdsTest(Func):
    """A test of a column against a list of ids given in Python (``condition``)."""

    arity = 1
    output_field = BooleanField()

    def __init__(self, column, ids: Sequence[int]):
        super().__init__(column)
        self.ids = list(ids)

    def condition(self, column_sql: str, vendor: str) -> tuple[str, list]:
        raise NotImplementedError

    def as_sql(self, compiler, connection, **extra_context):
        column_sql, column_params = compiler.compile(self.source_expressions[0])
        sql, params = self.condition(column_sql, connection.vendor)
        return sql, (*column_params, *params)


class InIds(_IdsTest):
    """``column`` is one of ``ids`` (an incremental update's or an estimate's customers, known in Python).

    On PostgreSQL ``column = ANY('{…}'::bigint[])``: one array constant, so the planner knows how many
    customers and looks each table up by its index on the column; where it filters rows by the array
    instead, a constant array is probed by hash. The same customers as a subquery of a temporary table
    were planned as a semi-join that scanned the whole store when another condition's subquery sat on
    the same scan (at 1M customers "no purchase in 3 months" for 10,000 customers read all million
    customers: 0.72 s against 0.11 s by index; docs/performance.md). Elsewhere ``column IN (…)``.
    """

    def condition(self, column_sql: str, vendor: str) -> tuple[str, list]:
        return ids_condition(column_sql, self.ids, vendor)


def ids_condition(column_sql: str, ids: Sequence[int], vendor: str) -> tuple[str, list]:
    """SQL and parameters for "``column_sql`` is one of ``ids``" (``InIds``; raw SQL calls it too)."""
    if vendor == "postgresql":
        return f"{column_sql} = ANY(%s::bigint[])", [list(ids)]
    return f"{column_sql} IN ({', '.join(['%s'] * len(ids))})", list(ids)


def scope_from(scope: str | Sequence[int]) -> RawSQL | list[int]:
    """An ``EvaluationContext.scope`` from SQL selecting customer ids, or from the ids themselves."""
    return RawSQL(scope, []) if isinstance(scope, str) else list(scope)


def _scoped(queryset: QuerySet, column: str, context: EvaluationContext) -> QuerySet:
    if context.id_range is not None:
        low, high = context.id_range
        queryset = queryset.filter(**{f"{column}__gte": low, f"{column}__lt": high})
    if context.scope is None:
        return queryset
    if isinstance(context.scope, RawSQL):
        return queryset.filter(**{f"{column}__in": context.scope})
    return queryset.filter(InIds(F(column), context.scope))


def _scope_sql(column_sql: str, context: EvaluationContext) -> tuple[str, list]:
    """``_scoped`` for raw SQL: "``column_sql`` is in scope", or nothing without a scope."""
    parts, params = [], []
    if context.id_range is not None:
        parts.append(f"{column_sql} >= %s AND {column_sql} < %s")
        params.extend(context.id_range)
    if isinstance(context.scope, RawSQL):
        parts.append(f"{column_sql} IN ({context.scope.sql})")
        params.extend(context.scope.params)
    elif context.scope is not None:
        sql, ids = ids_condition(column_sql, context.scope, connection.vendor)
        parts.append(sql)
        params.extend(ids)
    return " AND ".join(parts), params


def members_queryset(tree: dict, context: EvaluationContext) -> QuerySet:
    return universe(context).filter(compile_rule(tree, context))


def verdicts_queryset(trees: Sequence[dict], context: EvaluationContext, *, notes: list[set[str]] | None = None
                      ) -> QuerySet:
    """Every rule's verdict on each customer of the universe, in one statement: rows of
    (customer id, verdict of ``trees[0]``, verdict of ``trees[1]``, …).

    For an incremental update of many customers: each rule evaluated on its own looks every scoped
    customer up again (10,000 index lookups even for a rule on the customer table alone) and each of
    its subqueries is joined to them; here the customers are read once and each subquery (scoped like
    the rule's) is run once and probed as a hash. A verdict is falsy where the rule's WHERE clause would
    not hold (NULL included), so it equals ``members_queryset`` customer by customer. ``notes``, when
    given, receives what each rule approximated (``EvaluationContext.notes``), in order.
    """
    verdicts = {}
    for index, tree in enumerate(trees):
        before, context.notes = context.notes, set()
        verdicts[f"v{index}"] = ExpressionWrapper(compile_rule(tree, context), output_field=BooleanField())
        if notes is not None:
            notes.append(set(context.notes))
        context.notes = before | context.notes
    return universe(context).annotate(**verdicts).values_list("pk", *verdicts)


def verdict_rows(trees: Sequence[dict], context: EvaluationContext, *, notes: list[set[str]] | None = None
                 ) -> list[tuple]:
    """The rows of ``verdicts_queryset``, its ``products_purchased`` conditions read from one pass over
    the line items (``LineSummary``)."""
    context.line_summary = LineSummary(context)
    try:
        queryset = verdicts_queryset(trees, context, notes=notes)
        prefix, prefix_params = context.line_summary.with_clause()
    finally:
        context.line_summary = None
    try:
        sql, params = queryset.query.sql_with_params()
    except EmptyResultSet:  # no customer can be in the universe
        return []
    with connection.cursor() as cursor:
        cursor.execute(prefix + sql, [*prefix_params, *params])
        return cursor.fetchall()


def verdict_members(trees: Sequence[dict], context: EvaluationContext, *, notes: list[set[str]] | None = None
                    ) -> list[set[int]]:
    """The members of each rule among the universe's customers, in order, from ``verdict_rows``."""
    members: list[set[int]] = [set() for _tree in trees]
    for customer_id, *verdicts in verdict_rows(trees, context, notes=notes):
        for chosen, verdict in zip(members, verdicts, strict=True):
            if verdict:
                chosen.add(customer_id)
    return members


def compile_rule(tree: dict, context: EvaluationContext) -> Q:
    if "and" in tree:
        return _combine([compile_rule(child, context) for child in tree["and"]], operator.and_)
    if "or" in tree:
        return _combine([compile_rule(child, context) for child in tree["or"]], operator.or_)
    if "not" in tree:
        return ~compile_rule(tree["not"], context)
    return _compile_condition(tree, context)


def _combine(parts: list[Q], op) -> Q:
    result = parts[0]
    for part in parts[1:]:
        result = op(result, part)
    return result


def _number(value: Any) -> Decimal | int:
    return value if isinstance(value, int) else Decimal(str(value))


def _satisfies(actual, op: str, value) -> bool:
    """The comparison in Python (used to decide whether "no orders" matches an aggregate test)."""
    if op == "between":
        low, high = sorted(value)
        return low <= actual <= high
    return {"=": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge,
            "<": operator.lt, "<=": operator.le}[op](actual, value)


def _numeric_q(column: str, op: str, value: Any) -> Q:
    if op == "between":
        low, high = sorted(_number(v) for v in value)
        return Q(**{f"{column}__gte": low, f"{column}__lte": high})
    value = _number(value)
    if op == "=":
        return Q(**{column: value})
    if op == "!=":
        return ~Q(**{column: value}) & Q(**{f"{column}__isnull": False})
    lookup = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}[op]
    return Q(**{f"{column}__{lookup}": value})


def _days(op: str, value: Any, context: EvaluationContext) -> tuple[DayRange, bool]:
    """The days a date test selects, and whether it is negated (``!=``)."""
    one = dt.timedelta(days=1)
    if op == "between":
        low, high = sorted(context.date(v) for v in value)
        return DayRange(context.start_of(low), context.start_of(high + one)), False
    day = context.date(value)
    ranges = {
        "=": DayRange(context.start_of(day), context.start_of(day + one)),
        "!=": DayRange(context.start_of(day), context.start_of(day + one)),
        ">": DayRange(context.start_of(day + one), None),
        ">=": DayRange(context.start_of(day), None),
        "<": DayRange(None, context.start_of(day)),
        "<=": DayRange(None, context.start_of(day + one)),
    }
    return ranges[op], op == "!="


def _date_q(column: str, op: str, value: Any, context: EvaluationContext) -> Q:
    if op == "is_null":
        return Q(**{f"{column}__isnull": True})
    if op == "is_not_null":
        return Q(**{f"{column}__isnull": False})
    days, negated = _days(op, value, context)
    q = Q()
    if days.start is not None:
        q &= Q(**{f"{column}__gte": days.start})
    if days.end is not None:
        q &= Q(**{f"{column}__lt": days.end})
    if negated:
        return ~q & Q(**{f"{column}__isnull": False})
    return q


def _text_in(column: str, values: list[str]) -> Q:
    return _combine([Q(**{f"{column}__iexact": v}) for v in values], operator.or_)


def _counted_orders(context: EvaluationContext) -> QuerySet:
    return _scoped(Order.objects.filter(
        store=context.store, customer__isnull=False, ordinal__isnull=False, created_at__lt=context.cutoff
    ), "customer_id", context)


def _aggregate_q(grouped: QuerySet, alias: str, op: str, value: Any, zero: Any) -> Q:
    """``pk IN`` customers whose aggregate passes the test; customers with no rows have ``zero``.

    When "no rows" passes the test (``count < 2``), the test is written as ``NOT IN`` the
    customers whose aggregate fails it, so set-based SQL still sees everyone.
    """
    test = _numeric_q(alias, op, value)
    ids = grouped.filter(test).values("customer_id")
    if zero is not None and _satisfies(zero, op, _comparable(op, value)):
        failing = grouped.exclude(test).values("customer_id")
        return ~Q(pk__in=failing)
    return Q(pk__in=ids)


def _comparable(op: str, value: Any) -> Any:
    return [_number(v) for v in value] if op == "between" else _number(value)


def _compile_condition(node: dict, context: EvaluationContext) -> Q:
    name, op, value = node["field"], node["op"], node.get("value")
    historical = context.historical

    if name in ("number_of_orders", "amount_spent", "average_order_value"):
        if not historical:
            column = {"number_of_orders": "orders_count", "amount_spent": "amount_spent",
                      "average_order_value": "average_order_value"}[name]
            if op in ("is_null", "is_not_null"):
                return Q(**{f"{column}__isnull": op == "is_null"})
            return _numeric_q(column, op, value)
        if context.facts_table:
            return _past_facts_q(context.facts_table, name, op, value, context)
        grouped = _counted_orders(context).order_by().values("customer_id").annotate(
            n=Count("id"), spent=Sum(F("total") - F("refunded_amount"))
        )
        if name == "average_order_value":
            grouped = grouped.annotate(
                aov=Round(ExpressionWrapper(F("spent") * Value(Decimal("1.0")) / F("n"),
                                            output_field=DecimalField(max_digits=14, decimal_places=2)), 2)
            )
            if op in ("is_null", "is_not_null"):
                has_orders = Q(pk__in=grouped.values("customer_id"))
                return ~has_orders if op == "is_null" else has_orders
            return _aggregate_q(grouped, "aov", op, value, zero=None)
        alias, zero = ("n", 0) if name == "number_of_orders" else ("spent", Decimal(0))
        return _aggregate_q(grouped, alias, op, value, zero=zero)

    if name == "first_order_date":
        q = _date_q("first_order_at", op, value, context)
        if historical:
            before = Q(first_order_at__lt=context.cutoff)
            return (q | ~before) if op == "is_null" else (q & before)
        return q

    if name == "last_order_date":
        if not historical:
            return _date_q("last_order_at", op, value, context)
        if context.facts_table:
            return _past_facts_q(context.facts_table, name, op, value, context)
        grouped = _counted_orders(context).order_by().values("customer_id").annotate(last=Max("created_at"))
        if op in ("is_null", "is_not_null"):
            has_orders = Q(pk__in=grouped.values("customer_id"))
            return ~has_orders if op == "is_null" else has_orders
        return Q(pk__in=grouped.filter(_date_q("last", op, value, context)).values("customer_id"))

    if name == "customer_added_date":
        return _date_q("shopify_created_at", op, value, context)

    if name.startswith("first_order_"):
        column = name
        has_value = ~Q(**{column: ""})
        if historical:
            has_value &= Q(first_order_at__lt=context.cutoff)
        if op == "is_null":
            return ~has_value
        if op == "is_not_null":
            return has_value
        equal = Q(**{f"{column}__iexact": value})
        return (equal & has_value) if op == "=" else (~equal & has_value)

    if name == "customer_tags":
        q = Q(pk__in=_tagged(context, iexact=value))
        return q if op == "contains" else ~q

    if name in MAPPED_ATTRIBUTES:
        by_value = context.tag_values(name) if context.tag_values else {}
        has_value = Q(pk__in=_tagged(context, names=set().union(set(), *by_value.values())))
        if op in ("is_null", "is_not_null"):
            return ~has_value if op == "is_null" else has_value
        names = set().union(set(), *(n for v, n in by_value.items() if v.casefold() == str(value).casefold()))
        equal = Q(pk__in=_tagged(context, names=names))
        return equal if op == "=" else (has_value & ~equal)

    if name == "rfm_group":
        if value == "PROSPECTS":
            q = ~_has_orders(context)
        else:
            cutoff = context.cutoff if historical else None
            q = Q(pk__in=RawSQL(*rfm.group_members_sql(context.store.pk, value, cutoff)))
        return q if op == "=" else ~q

    if name in ("customer_countries", "customer_regions", "customer_cities"):
        column = {"customer_countries": "country_code", "customer_regions": "province_code",
                  "customer_cities": "city"}[name]
        q = Q(**{f"{column}__iexact": value}) & ~Q(**{column: ""})
        return q if op == "contains" else ~q

    if name in ("email_subscription_status", "sms_subscription_status"):
        column = "email_marketing" if name.startswith("email") else "sms_marketing"
        q = Q(**{column: value})
        return q if op == "=" else ~q

    if name == "products_purchased":
        q = _products_purchased(node["params"], context)
        return q if op == "matches" else ~q

    if name == "orders_placed":
        q = _orders_placed(node["params"], context)
        return q if op == "matches" else ~q

    if name == "in_segment":
        return _in_segment(value, context)

    raise ValueError(f"unvalidated field {name!r}")  # validate() rejects it first


def _past_facts_q(table: str, name: str, op: str, value: Any, context: EvaluationContext) -> Q:
    """A past day's fact condition over ``context.facts_table`` (buyers only; others have no orders).

    Each subquery reads only the customers in scope, as ``_scoped`` limits the others: unscoped, the
    planner hashed every buyer's facts for each condition and then tested every customer of the store
    against them before applying the scope (docs/performance.md).
    """
    scope, scope_params = _scope_sql("customer_id", context)

    def facts(test: str = "", params: Sequence[Any] = ()) -> RawSQL:
        where = " AND ".join(part for part in (scope, test) if part)
        return RawSQL(f"SELECT customer_id FROM {table}" + (f" WHERE {where}" if where else ""),
                      [*scope_params, *params])

    buyers = Q(pk__in=facts())
    if op in ("is_null", "is_not_null"):  # AOV and last order date are empty exactly without orders
        return ~buyers if op == "is_null" else buyers
    if name == "last_order_date":
        days, negated = _days(op, value, context)
        parts, params = [], []
        for bound, sign in ((days.start, ">="), (days.end, "<")):
            if bound is not None:
                parts.append(f"last_at {sign} %s")
                params.append(connection.ops.adapt_datetimefield_value(bound))
        test = " AND ".join(parts)
        if negated:
            test = f"NOT ({test})"
        return Q(pk__in=facts(test, params))
    expression = {"number_of_orders": "n", "amount_spent": "spent",
                  "average_order_value": "ROUND(spent * 1.0 / n, 2)"}[name]
    if op == "between":
        low, high = sorted(_number(v) for v in value)
        test, params = f"{expression} BETWEEN CAST(%s AS NUMERIC) AND CAST(%s AS NUMERIC)", [low, high]
    else:
        sql_op = "<>" if op == "!=" else op
        test, params = f"{expression} {sql_op} CAST(%s AS NUMERIC)", [_number(value)]
    zero = {"number_of_orders": 0, "amount_spent": Decimal(0)}.get(name)
    if zero is not None and _satisfies(zero, op, _comparable(op, value)):
        # Customers without orders pass (e.g. "fewer than 2 orders"): everyone but the buyers who fail.
        return ~Q(pk__in=facts(f"NOT ({test})", params))
    return Q(pk__in=facts(test, params))


def _has_orders(context: EvaluationContext) -> Q:
    if not context.historical:
        return Q(orders_count__gt=0)
    return Q(pk__in=_counted_orders(context).values("customer_id"))


def _tagged(context: EvaluationContext, *, iexact: str | None = None, names: set[str] | None = None) -> QuerySet:
    """Customer ids carrying the tag (``iexact``) or one of ``names``: now, or as of the evaluation day
    from the tag history.

    Tag history starts with the store's first import. On a day before it, tags are read as they
    were at the end of the day the history starts; with no history at all, as they are now. Both
    are noted on the context, so snapshots can say they are approximate.
    """
    which = Q(name__iexact=iexact) if iexact is not None else Q(name__in=sorted(names or ()))
    if names is not None and not names:
        return CustomerTag.objects.none().values("customer_id")
    tags = _scoped(CustomerTag.objects.filter(which, store=context.store), "customer_id", context)
    if not context.historical:
        return tags.values("customer_id")
    start = context.tag_history_start
    if start is None:
        context.notes.add("tags_without_history")
        return tags.values("customer_id")
    at = context.cutoff
    if at <= start:
        context.notes.add("tags_before_history")
        at = context.start_of(start.astimezone(context.store.zone).date() + dt.timedelta(days=1))
    events = _scoped(CustomerTagEvent.objects.filter(which, store=context.store, occurred_at__lt=at),
                     "customer_id", context)
    later = events.filter(customer_id=OuterRef("customer_id"), name=OuterRef("name")).filter(
        Q(occurred_at__gt=OuterRef("occurred_at")) | Q(occurred_at=OuterRef("occurred_at"), id__gt=OuterRef("id"))
    )
    return events.filter(action=TagEventAction.ADDED).filter(~Exists(later)).values("customer_id")


def _products_purchased(params: dict, context: EvaluationContext) -> Q:
    # Line items carry their order's customer, time and ordinal (customer_facts_refresh keeps them), so
    # this reads line items alone: no join of millions of lines to their orders.
    ordered = _ordered_products(params, context)
    if ordered is not None:
        return ordered
    chosen = Q()  # which of the customer's counted lines the condition looks at
    for name, param in params.items():
        op, value = param["op"], param["value"]
        values = value if op == "in" else [value]
        if name in ("id", "tag"):
            chosen &= Q(product_id__in=context.product_ids(name, values) or [NO_ID])
        elif name == "sku":
            chosen &= _text_in("sku", values)
        elif name in ("product_type", "vendor"):
            # The line's own text (kept from the order) or its product's current one.
            products = context.product_ids(name, values) or [NO_ID]
            chosen &= _text_in(name, values) | Q(product_id__in=products)
        elif name == "date":
            chosen &= _date_q("ordered_at", op, value, context)
        elif name == "order_number":
            chosen &= _numeric_q("ordinal", op, value)
    aggregates = {k: v for k, v in params.items() if k in AGGREGATE_PARAMS}
    if context.line_summary is not None:
        summarised = context.line_summary.condition(chosen, aggregates)
        if summarised is not None:
            return summarised
    lines = _counted_lines(context).filter(chosen)
    if not aggregates:
        return Q(pk__in=lines.values("customer_id"))
    grouped = lines.order_by().values("customer_id").annotate(
        n=Count("order_id", distinct=True), quantity=Sum("quantity")
    )
    parts = []
    for name, param in aggregates.items():
        alias = "n" if name == "count" else "quantity"
        parts.append(_aggregate_q(grouped, alias, param["op"], param["value"], zero=0))
    return _combine(parts, operator.and_)


# The parameters a condition on the orders' products answers (``_ordered_products``); SKU, type and vendor
# are the line's own text and the quantity its own, so conditions on them read the lines.
ORDER_PRODUCT_PARAMS = frozenset({"id", "tag", "date", "order_number", "count"})


class ProductsOverlap(_IdsTest):
    """The order's products (``Order.product_ids``) include one of ``ids``: ``'{…}'::bigint[] && product_ids``
    (PostgreSQL only).

    The constant first: PostgreSQL unpacks the second array for every row, and an order holds fewer products
    than a condition names (at 1M customers, 8 tea products: 0.45 s → 0.35 s over 2.3 M orders). The ids are
    integers, written as a literal.
    """

    def condition(self, column_sql: str, vendor: str) -> tuple[str, list]:
        return f"'{{{','.join(str(int(pk)) for pk in self.ids)}}}'::bigint[] && {column_sql}", []


def _ordered_products(params: dict, context: EvaluationContext) -> Q | None:
    """A ``products_purchased`` condition on products (id or tag), dates, order numbers and the count of
    orders, answered from the counted orders' products (``Order.product_ids``): one row per order read from
    ``order_customer_cover`` instead of every line from ``line_item_customer_cover``, and the orders counted
    without a per-customer distinct (docs/performance.md). None where it cannot answer (``_chosen_orders``).
    """
    chosen = _chosen_orders(params, context)
    if chosen is None:
        return None
    orders = _counted_orders(context).filter(chosen)
    if "count" not in params:
        return Q(pk__in=orders.values("customer_id"))
    # COUNT(*), not of the id: the id is not in the covering index, and reading it would visit every order row.
    grouped = orders.order_by().values("customer_id").annotate(n=Count("*"))
    return _aggregate_q(grouped, "n", params["count"]["op"], params["count"]["value"], zero=0)


def _chosen_orders(params: dict, context: EvaluationContext) -> Q | None:
    """Which counted orders a ``products_purchased`` condition looks at, as a test of the order's products,
    time and ordinal; None where the orders' products cannot answer it: other parameters (SKU, type and
    vendor are the line's own text, the quantity its own), not PostgreSQL, a statement reading the lines
    once for all its conditions (``LineSummary``), or a store where a counted order's products are not known
    yet.

    The same verdicts as the lines: a line of one of the products on a counted order in the window is an
    order whose products include one of them. Several product parameters select lines of products in all
    of them, so their ids are intersected (not each overlapped: two lines could match one each).
    """
    if (connection.vendor != "postgresql" or context.line_summary is not None
            or context.order_products_known is None or not set(params) <= ORDER_PRODUCT_PARAMS):
        return None
    products: set[int] | None = None
    for name in ("id", "tag"):
        if name in params:
            op, value = params[name]["op"], params[name]["value"]
            ids = set(context.product_ids(name, value if op == "in" else [value]))
            products = ids if products is None else products & ids
    if products is None or not context.order_products_known():
        return None
    chosen = Q()
    if "date" in params:
        chosen &= _date_q("created_at", params["date"]["op"], params["date"]["value"], context)
    if "order_number" in params:
        chosen &= _numeric_q("ordinal", params["order_number"]["op"], params["order_number"]["value"])
    # Last: PostgreSQL tests a row's conditions in the order written, and the overlap of two arrays costs more
    # than a comparison of times (0.2 µs an order on a slow day; docs/performance.md).
    return chosen & Q(ProductsOverlap(F("product_ids"), sorted(products) or [NO_ID]))


def ordered_products_buyers(tree: dict, context: EvaluationContext) -> QuerySet | None:
    """For a rule that is one ``products_purchased MATCHES`` condition the orders' products answer, evaluated
    today: rows of (``customer_id``, ``last_at``: the time of the customer's last counted order) for its members,
    from one pass over the customers' counted orders, the condition's test an aggregate ``FILTER``. None for
    any other rule, and where a customer without orders would be a member (``count < 2``).

    The rule's members are buyers of the store, and today ``last_at`` is their ``last_order_at``: a preview
    counts them and picks its latest buyers without reading a customer row but the ones it shows. Looking up
    every member in the customer table was a fifth of the count ("3 tea orders in a year" at 1M customers,
    docs/performance.md).
    """
    if tree.get("field") != "products_purchased" or tree["op"] != "matches" or context.historical:
        return None
    params = tree["params"]
    count = params.get("count", {"op": ">=", "value": 1})
    if _satisfies(0, count["op"], _comparable(count["op"], count["value"])):
        return None
    chosen = _chosen_orders(params, context)
    if chosen is None:
        return None
    orders = _counted_orders(context)
    # Every member has a chosen order on or after the date test's first day, so its last counted order is
    # there too: the orders before it need not be grouped ("date > -1y" at 1M: 0.77 s → 0.70 s a half).
    start = _date_start(params.get("date"), context)
    if start is not None:
        orders = orders.filter(created_at__gte=start)
    grouped = orders.order_by().values("customer_id").annotate(
        n=Count("customer_id", filter=chosen), last_at=Max("created_at"))
    return grouped.filter(_numeric_q("n", count["op"], count["value"])).values("customer_id", "last_at")


def _date_start(date: dict | None, context: EvaluationContext) -> dt.datetime | None:
    """The first moment a date test selects (``> -1y``, ``between …``), or None where it selects from the
    beginning (``< -3m``) or around a day (``!=``, ``is_null``)."""
    if date is None or date["op"] in ("is_null", "is_not_null", "!="):
        return None
    return _days(date["op"], date["value"], context)[0].start


def _counted_lines(context: EvaluationContext) -> QuerySet:
    """Line items of the universe's counted orders up to the evaluation day (``products_purchased``)."""
    return _scoped(LineItem.objects.filter(
        store=context.store,
        customer__isnull=False,
        ordinal__isnull=False,
        ordered_at__lt=context.cutoff,
    ), "customer_id", context)


class LineSummary:
    """The ``products_purchased`` conditions of one statement, answered from one pass over the line items.

    Each condition alone groups the customers' lines again (its own scan of the covering index, per
    customer in scope). Here every condition becomes filtered aggregates of one grouped read of the
    lines (``query``), kept as a ``WITH`` query the conditions' ``IN`` subqueries read (``verdict_rows``)
    or as a table (``line_summary_create``); the same condition twice (an inlined ``in_segment``) is
    one column. A customer without matching lines counts as 0, as in ``_aggregate_q``. Measured in
    docs/performance.md.
    """

    TABLE = "ecp_line_summary"

    def __init__(self, context: EvaluationContext, *, table: str = TABLE):
        self.context = context
        self.table = table
        self.keys: dict[str, int] = {}  # condition (its Q as text) → its columns' number
        self.columns: dict[str, Any] = {}
        # Once its table is written (``line_summary_create``), a summary only answers the conditions it
        # holds; for any other (a day that turned at midnight), ``condition`` returns None.
        self.frozen = False

    def condition(self, chosen: Q, aggregates: dict[str, dict]) -> Q | None:
        key = str(chosen)
        if key not in self.keys:
            if self.frozen:
                return None
            self.keys[key] = len(self.keys)
        index = self.keys[key]
        if not aggregates:
            column = self._column(f"e{index}", Count("order_id", filter=chosen))
            if column is None:
                return None
            return Q(pk__in=RawSQL(f"SELECT customer_id FROM {self.table} WHERE {column} > 0", []))
        parts = []
        for name, param in aggregates.items():
            if name == "count":
                column = self._column(f"n{index}", Count("order_id", distinct=True, filter=chosen))
            else:
                column = self._column(f"q{index}", Sum("quantity", filter=chosen))
            if column is None:
                return None
            test, params = _numeric_sql(f"COALESCE({column}, 0)", param["op"], param["value"])
            if _satisfies(0, param["op"], _comparable(param["op"], param["value"])):
                # Customers without a matching line pass: everyone but those whose aggregate fails.
                parts.append(~Q(pk__in=RawSQL(f"SELECT customer_id FROM {self.table} WHERE NOT ({test})", params)))
            else:
                parts.append(Q(pk__in=RawSQL(f"SELECT customer_id FROM {self.table} WHERE {test}", params)))
        return _combine(parts, operator.and_)

    def _column(self, name: str, aggregate) -> str | None:
        if self.frozen:
            return name if name in self.columns else None
        self.columns.setdefault(name, aggregate)
        return name

    def query(self) -> tuple[str, list]:
        """The grouped read of the lines: one row per customer with counted lines, one column per aggregate
        (``COUNT(DISTINCT order_id) FILTER (WHERE …)``, ``SUM(quantity) FILTER (WHERE …)``).

        Not per order first and then per customer: at 1M customers that took 20 s against 15.5 s for the
        five reference conditions (docs/performance.md).
        """
        summary = _counted_lines(self.context).order_by().values("customer_id").annotate(**self.columns)
        sql, params = summary.query.sql_with_params()
        return sql, list(params)

    def with_clause(self) -> tuple[str, list]:
        """``WITH <table> AS (…)`` for the statement, or nothing when no condition read line items."""
        if not self.columns:
            return "", []
        sql, params = self.query()
        # MATERIALIZED: computed once, however many conditions read it (PostgreSQL would otherwise inline
        # it into each, and SQLite may).
        return f"WITH {self.table} AS MATERIALIZED ({sql}) ", params


def line_summary_create(trees: Sequence[dict], context: EvaluationContext, table: str) -> LineSummary | None:
    """For rules evaluated one statement each, on several connections (a whole store's recompute): the
    ``products_purchased`` conditions of all of them as one table ``table`` (UNLOGGED, so every
    connection reads it once this one commits), written in one pass over the line items; returns the
    summary to set as each rule's ``EvaluationContext.line_summary``, or None when fewer than two
    conditions read line items. The caller drops the table."""
    summary = LineSummary(context, table=table)
    context.line_summary = summary
    try:
        for tree in trees:
            compile_rule(tree, context)
    finally:
        context.line_summary = None
    if len(summary.keys) < 2:
        return None
    sql, params = summary.query()
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE UNLOGGED TABLE {table} AS {sql}", params)
        cursor.execute(f"ANALYZE {table}")
    summary.frozen = True
    return summary


def reads_lines(tree: dict) -> bool:
    """Whether the rule has a ``products_purchased`` condition (it reads line items)."""
    return any(c["field"] == "products_purchased" for _path, c in iter_conditions(tree))


def _numeric_sql(column_sql: str, op: str, value: Any) -> tuple[str, list]:
    """``_numeric_q`` as SQL, for a column that is never NULL."""
    if op == "between":
        low, high = sorted(_number(v) for v in value)
        return f"{column_sql} BETWEEN %s AND %s", [low, high]
    sql_op = {"=": "=", "!=": "<>", ">": ">", ">=": ">=", "<": "<", "<=": "<="}[op]
    return f"{column_sql} {sql_op} %s", [_number(value)]


def _orders_placed(params: dict, context: EvaluationContext) -> Q:
    orders = _counted_orders(context)
    for name, param in params.items():
        op, value = param["op"], param["value"]
        values = value if op == "in" else [value]
        if name == "date":
            orders = orders.filter(_date_q("created_at", op, value, context))
        elif name == "amount":
            orders = orders.filter(_numeric_q("total", op, value))
        elif name == "discount_code":
            orders = orders.filter(_text_in("discount_code", values))
        elif name == "source":
            orders = orders.filter(_text_in("source_name", values))
        elif name == "utm_campaign":
            orders = orders.filter(_text_in("utm_campaign", values))
    aggregates = {k: v for k, v in params.items() if k in AGGREGATE_PARAMS}
    if not aggregates:
        return Q(pk__in=orders.values("customer_id"))
    # COUNT(*), not of the order id: the id is not in order_customer_cover, so counting it made every counted
    # order's row be visited (at 1M customers an incremental update's 5,000 customers: 22,000 orders in
    # 172–207 ms by Index Scan, 100–107 ms by Index Only Scan).
    grouped = orders.order_by().values("customer_id").annotate(n=Count("*"), total_amount=Sum("total"))
    parts = []
    for name, param in aggregates.items():
        if name == "count":
            parts.append(_aggregate_q(grouped, "n", param["op"], param["value"], zero=0))
        else:
            parts.append(_aggregate_q(grouped, "total_amount", param["op"], param["value"], zero=Decimal(0)))
    return _combine(parts, operator.and_)


def _in_segment(slug: str, context: EvaluationContext) -> Q:
    from segments.models import Membership, SegmentKind

    segment = context.segment(slug)
    known = context.evaluated(slug) if context.evaluated else None
    if known is not None:
        return Q(pk__in=known)
    if segment.kind == SegmentKind.CONDITION and (context.historical or context.inline_segments):
        if slug in context._stack:
            raise InvalidRule([RuleProblem("", _("Segments refer to each other in a cycle: %(cycle)s.")
                                           % {"cycle": " → ".join([*context._stack, slug])})])
        context._stack.append(slug)
        try:
            return compile_rule(segment.rule, context)
        finally:
            context._stack.pop()
    return Q(pk__in=_scoped(Membership.objects.filter(segment=segment), "customer_id", context).values("customer_id"))
