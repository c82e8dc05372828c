"""AiTrillion (and any partner app that writes Shopify tags) read back as customer attributes.

A ``TagMapping`` turns tags into a value of one attribute: loyalty tier, membership plan,
affiliate group or signup source. Nothing is copied: a rule such as ``loyalty_tier = 'Gold'``
compiles to "has one of the tags that map to Gold" (``tag_names_by_value`` lists them from the
store's tags and tag history), so it is always current, and as of a past day it reads the tag
history like any tag condition. Tier movement comes from the same tag history.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _

from ecpower.commerce.models import CustomerTag, CustomerTagEvent, Store, TagEventAction
from integrations.models import MappedAttribute, MatchKind, TagMapping

ATTRIBUTES = tuple(MappedAttribute.values)


def compile_pattern(kind: str, pattern: str) -> re.Pattern:
    """The mapping as a case-insensitive regular expression whose first group is the value."""
    if not pattern.strip():
        raise ValidationError({"pattern": [_("Give a prefix or a regular expression.")]})
    if kind == MatchKind.PREFIX:
        return re.compile(re.escape(pattern.strip()) + r"(.+)", re.IGNORECASE)
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValidationError({"pattern": [_("Not a regular expression: %(error)s (column %(column)s).")
                                           % {"error": exc.msg, "column": (exc.pos or 0) + 1}]}) from exc
    if compiled.groups < 1:
        raise ValidationError({"pattern": [_("Put the value in a group, e.g. ^AIT-Tier-(\\w+)$.")]})
    return compiled


def value_of(compiled: re.Pattern, tag: str) -> str | None:
    match = compiled.fullmatch(tag.strip())
    if not match or not match.group(1):
        return None
    return match.group(1).strip() or None


def _store_tag_names(store: Store) -> set[str]:
    names = set(CustomerTag.objects.filter(store=store).values_list("name", flat=True).distinct())
    names |= set(CustomerTagEvent.objects.filter(store=store).values_list("name", flat=True).distinct())
    return names


def tag_names_by_value(store: Store, attribute: str) -> dict[str, set[str]]:
    """{value (as first written): tag names that map to it} over the store's tags, now and in history.

    Values equal but for case are one value. The first mapping (by id) that reads a tag wins.
    """
    mappings = [compile_pattern(m.kind, m.pattern) for m in
                TagMapping.objects.filter(store=store, attribute=attribute).order_by("id")]
    if not mappings:
        return {}
    result: dict[str, set[str]] = {}
    spelling: dict[str, str] = {}
    for name in sorted(_store_tag_names(store)):
        for compiled in mappings:
            value = value_of(compiled, name)
            if value:
                key = spelling.setdefault(value.casefold(), value)
                result.setdefault(key, set()).add(name)
                break
    return result


@dataclass
class Preview:
    values: list[tuple[str, int, list[str]]]  # value, customers with it now, example tags
    customers_with_value: int
    customers: int


def mapping_preview(*, store: Store, kind: str, pattern: str) -> Preview:
    """What a mapping would read from the store's current tags, before it is saved."""
    compiled = compile_pattern(kind, pattern)
    customers_by_value: dict[str, set[int]] = defaultdict(set)
    examples: dict[str, Counter] = defaultdict(Counter)
    spelling: dict[str, str] = {}
    for customer_id, name in CustomerTag.objects.filter(store=store).values_list("customer_id", "name"):
        value = value_of(compiled, name)
        if value:
            key = spelling.setdefault(value.casefold(), value)
            customers_by_value[key].add(customer_id)
            examples[key][name] += 1
    values = sorted(((value, len(ids), [t for t, _n in examples[value].most_common(3)])
                     for value, ids in customers_by_value.items()), key=lambda row: (-row[1], row[0]))
    with_value = len(set().union(*customers_by_value.values())) if customers_by_value else 0
    return Preview(values=values, customers_with_value=with_value,
                   customers=store.customers.count())


@dataclass
class Movement:
    start: dt.datetime
    end: dt.datetime
    moves: dict[tuple[str | None, str | None], int]  # (from value or None, to value or None) → customers


def attribute_movement(*, store: Store, attribute: str = MappedAttribute.LOYALTY_TIER, start: dt.datetime,
                       end: dt.datetime) -> Movement:
    """How many customers moved from each value to each other value between ``start`` and ``end``.

    A customer's value at an instant is read from the tag history (the tags whose latest event
    before it is an addition); when two mapped tags are held at once, the one added last counts.
    ``None`` is "no value" (e.g. a customer who got their first tier in the window).
    """
    by_value = tag_names_by_value(store, attribute)
    value_of_name = {name: value for value, names in by_value.items() for name in names}
    events = (CustomerTagEvent.objects.filter(store=store, name__in=list(value_of_name), occurred_at__lt=end)
              .order_by("customer_id", "occurred_at", "id").values_list("customer_id", "name", "action", "occurred_at"))
    timelines: dict[int, list] = defaultdict(list)
    for customer_id, name, action, occurred_at in events.iterator():
        timelines[customer_id].append((name, action, occurred_at))

    def value_at(timeline, instant) -> str | None:
        held: dict[str, dt.datetime] = {}
        for name, action, occurred_at in timeline:
            if occurred_at >= instant:
                break
            if action == TagEventAction.ADDED:
                held[name] = occurred_at
            else:
                held.pop(name, None)
        if not held:
            return None
        return value_of_name[max(held, key=lambda n: held[n])]

    moves: Counter = Counter()
    for timeline in timelines.values():
        before, after = value_at(timeline, start), value_at(timeline, end)
        if before != after:
            moves[before, after] += 1
    return Movement(start=start, end=end, moves=dict(moves))


def attribute_distribution(*, store: Store, segment=None) -> dict[str, list[tuple[str, int]]]:
    """{attribute: [(value, customers), …]} now, for the store or a segment's members (most common first)."""
    from segments.models import Membership

    result = {}
    for attribute in ATTRIBUTES:
        by_value = tag_names_by_value(store, attribute)
        if not by_value:
            continue
        value_of_name = {name: value for value, names in by_value.items() for name in names}
        tags = CustomerTag.objects.filter(store=store, name__in=list(value_of_name))
        if segment is not None:
            tags = tags.filter(customer_id__in=Membership.objects.filter(segment=segment).values("customer_id"))
        customers: dict[str, set[int]] = defaultdict(set)
        for customer_id, name in tags.values_list("customer_id", "name"):
            customers[value_of_name[name]].add(customer_id)
        result[attribute] = sorted(((v, len(ids)) for v, ids in customers.items()), key=lambda r: (-r[1], r[0]))
    return result
