"""Reads about segments: evaluation context, preview, explain, members, dependency order."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import math
import random
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, Max, Min, Q, QuerySet, Window
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.translation import gettext as _

from ecpower.commerce.models import Customer, CustomerTagEvent, Order, Product, ProductTag, Store
from ecpower.commerce.services import customers_scope
from segments import rules
from segments.models import Membership, MembershipEvent, Segment, SegmentKind
from segments.query_language import to_text

PREVIEW_SAMPLE_SIZE = 20
BUILDER_SAMPLE_SIZE = 10  # the segment builder's members shown under its live count


def store_today(store: Store) -> dt.date:
    """Today's calendar date in the store's time zone."""
    return timezone.now().astimezone(store.zone).date()


def evaluation_context(*, store: Store, as_of: dt.date | None = None, scope: RawSQL | list[int] | None = None
                       ) -> rules.EvaluationContext:
    today = store_today(store)
    cache: dict[str, Segment] = {}

    def segment(slug: str) -> Segment:
        if slug not in cache:
            try:
                cache[slug] = Segment.objects.get(store=store, slug=slug)
            except Segment.DoesNotExist:
                raise rules.InvalidRule(
                    [rules.RuleProblem("", _("There is no segment %(slug)r in this store.") % {"slug": slug})]
                ) from None
        return cache[slug]

    as_of = as_of or today
    history_start = None
    if as_of < today:  # only as-of evaluations read the tag history
        history_start = CustomerTagEvent.objects.filter(store=store).aggregate(start=Min("occurred_at"))["start"]
    values: dict[str, dict[str, set[str]]] = {}

    def tag_values(attribute: str) -> dict[str, set[str]]:
        from integrations.aitrillion.mappings import tag_names_by_value

        if attribute not in values:
            values[attribute] = tag_names_by_value(store, attribute)
        return values[attribute]

    def product_ids(param: str, values: list) -> list[int]:
        if param == "id":
            return sorted(Product.objects.filter(store=store, shopify_id__in=values).values_list("pk", flat=True))
        column, model, id_column = {"tag": ("name", ProductTag, "product_id"), "product_type": ("product_type", Product, "pk"),
                                    "vendor": ("vendor", Product, "pk")}[param]
        matching = Q()
        for value in values:
            matching |= Q(**{f"{column}__iexact": value})
        return sorted(set(model.objects.filter(matching, store=store).values_list(id_column, flat=True)))

    known: list[bool] = []

    def order_products_known() -> bool:
        if not known:  # order_products_unknown holds only the orders without them: a probe of an empty index
            known.append(not Order.objects.filter(store=store, product_ids__isnull=True, ordinal__isnull=False)
                         .exists())
        return known[0]

    return rules.EvaluationContext(store=store, as_of=as_of, today=today, segment=segment,
                                   tag_history_start=history_start, tag_values=tag_values, scope=scope,
                                   product_ids=product_ids, order_products_known=order_products_known)


def segment_exists_checker(store: Store):
    slugs = set(Segment.objects.filter(store=store).values_list("slug", flat=True))
    return slugs.__contains__


def rule_members(*, store: Store, tree: dict, as_of: dt.date | None = None) -> QuerySet[Customer]:
    """Customers of ``store`` matching ``tree`` (validated by the caller) as of ``as_of``."""
    return rules.members_queryset(tree, evaluation_context(store=store, as_of=as_of))


@dataclass
class Preview:
    count: int
    sample: list[Customer]
    query: str
    tree: dict
    as_of: dt.date
    # An estimate from a random draw of ``sampled`` customers: ``count`` ± ``margin`` (95 %).
    estimated: bool = False
    margin: int = 0
    sampled: int = 0


# Customer ids in the temporary table an estimate evaluates (one per connection, emptied each time).
ESTIMATE_SCOPE_TABLE = "ecp_preview_sample"


def segment_preview(
    *, store: Store, tree: dict, as_of: dt.date | None = None, sample_size: int = PREVIEW_SAMPLE_SIZE,
    estimate: bool = False,
) -> Preview:
    """Member count and a sample for an unsaved rule (``InvalidRule`` when it is not valid).

    With ``estimate``, a rule that aggregates orders or line items on a store of more than
    ``settings.PREVIEW_ESTIMATE_ABOVE`` customers is evaluated for a random draw of about
    ``settings.PREVIEW_ESTIMATE_SAMPLE`` of them and the count scaled up, so the segment builder
    answers in about a second at a million customers; it then asks for the exact count.
    """
    tree = rules.check(tree, segment_exists=segment_exists_checker(store))
    if estimate and rules.reads_orders(tree):
        preview = _preview_estimate(store, tree, as_of, sample_size)
        if preview is not None:
            return preview
    context = evaluation_context(store=store, as_of=as_of)
    parts = _preview_parts(store, tree)
    if parts is None:
        count, sample = _rule_counted(tree, context, sample_size)
    else:
        count, sample = _rule_counted_in_parts(tree, context, parts, sample_size)
    return Preview(count=count, sample=sample, query=to_text(tree), tree=tree, as_of=context.as_of)


def _customer_id_bounds(store: Store) -> dict[str, int | None]:
    """The store's lowest and highest customer id (``low``, ``high``; None without customers): two probes of
    the (store, -id) index, the store's size as a range of ids without counting it."""
    return Customer.objects.filter(store=store).aggregate(low=Min("id"), high=Max("id"))


def customer_id_span(store: Store) -> int:
    """How many ids the store's customers span (0 without customers): its size without counting it, at most the
    ids of customers deleted since or of other stores' customers made in between too many."""
    bounds = _customer_id_bounds(store)
    return 0 if bounds["low"] is None else bounds["high"] - bounds["low"] + 1


def customer_id_ranges(store: Store, *, above: int) -> list[tuple[int, int]] | None:
    """The store's customer ids cut into ``settings.SEGMENT_RECOMPUTE_THREADS`` ranges ([low, high)), one per
    connection of a read split side by side, or None to read on this one: a store whose ids span no more than
    ``above``, one thread, SQLite, or inside a transaction (other connections could not see its rows)."""
    threads = settings.SEGMENT_RECOMPUTE_THREADS
    if threads < 2 or connection.vendor != "postgresql" or connection.in_atomic_block:
        return None
    bounds = _customer_id_bounds(store)
    if bounds["low"] is None or bounds["high"] - bounds["low"] < above:
        return None
    low, high = bounds["low"], bounds["high"] + 1
    edges = [low + (high - low) * part // threads for part in range(threads)] + [high]
    return list(itertools.pairwise(edges))


def _preview_parts(store: Store, tree: dict) -> list[tuple[int, int]] | None:
    """The ranges of customer ids an exact count is split into, one per connection, or None to count on this
    one: a rule over orders or line items on a store of more than ``settings.PREVIEW_ESTIMATE_ABOVE``
    customers (``customer_id_ranges``)."""
    if not rules.reads_orders(tree):
        return None
    return customer_id_ranges(store, above=settings.PREVIEW_ESTIMATE_ABOVE)


def _rule_counted_in_parts(tree: dict, context: rules.EvaluationContext, parts: list[tuple[int, int]],
                           sample_size: int) -> tuple[int, list[Customer]]:
    """``_rule_counted`` for each range of customer ids on its own connection, side by side: the count is
    their sum, the sample the latest buyers of their samples.

    One statement keeps one core busy (PostgreSQL's parallel workers gained 20 % on the lines of a million
    customers); two connections, each reading its half of the customers from the index led by the customer,
    halve the time (docs/performance.md). Each connection marks its statements as this one does
    (``superseding``), so a newer preview from the same page cancels both.
    """
    wrappers = list(connection.execute_wrappers)

    def counted(part: tuple[int, int]) -> tuple[int, list[Customer]]:
        try:
            with contextlib.ExitStack() as stack:
                for wrapper in wrappers:
                    stack.enter_context(connection.execute_wrapper(wrapper))
                return _rule_counted(tree, dataclasses.replace(context, id_range=part, notes=set(), _stack=[]),
                                     sample_size)
        finally:
            connection.close()  # this thread's own connection

    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        futures = [pool.submit(counted, part) for part in parts]
        results = [future.result() for future in futures]  # the first error, once every part has ended
    earliest = dt.datetime.min.replace(tzinfo=dt.UTC)
    # As the database orders them (last order descending, customers without one first; then id descending).
    sample = sorted((customer for _count, shown in results for customer in shown),
                    key=lambda c: (c.last_order_at is None, c.last_order_at or earliest, c.pk), reverse=True)
    return sum(count for count, _shown in results), sample[:sample_size]


def _rule_counted(tree: dict, context: rules.EvaluationContext, sample_size: int) -> tuple[int, list[Customer]]:
    """How many customers the rule selects and its ``sample_size`` most recent buyers (``_members_counted``);
    for a rule on the products of orders alone, from its buyers' orders (``rules.ordered_products_buyers``)."""
    buyers = rules.ordered_products_buyers(tree, context)
    if buyers is None:
        return _members_counted(rules.members_queryset(tree, context), sample_size)
    sql, params = buyers.query.sql_with_params()
    with connection.cursor() as cursor:
        if not sample_size:
            cursor.execute(f"SELECT COUNT(*) FROM ({sql}) AS buyers", params)
            return cursor.fetchone()[0], []
        # Their last orders are their customers' last_order_at: the same order as _members_counted's.
        cursor.execute(f"SELECT customer_id, COUNT(*) OVER () FROM ({sql}) AS buyers"
                       f" ORDER BY last_at DESC, customer_id DESC LIMIT %s", [*params, sample_size])
        rows = cursor.fetchall()
    return _counted_sample(rows)


def _counted_sample(rows: list[tuple[int, int]]) -> tuple[int, list[Customer]]:
    """From (customer id, members in all) rows in the sample's order: the count and the sample's customers."""
    if not rows:
        return 0, []
    shown = Customer.objects.in_bulk([pk for pk, _total in rows])
    return rows[0][1], [shown[pk] for pk, _total in rows]


def _members_counted(members: QuerySet, sample_size: int) -> tuple[int, list[Customer]]:
    """How many customers ``members`` selects and its ``sample_size`` most recent buyers, from one
    evaluation of the rule.

    A count and then the sample evaluated the rule twice (a ``products_purchased`` rule grouped the
    store's line items each time); here the sample's ids carry the count as a window aggregate
    (``COUNT(*) OVER ()``, taken before the limit) and the sample's rows are read by primary key.
    The builder's exact preview at 1M customers: 9.6–11.8 s → 5.9–6.8 s for "3 tea orders in a
    year", 0.91–0.96 s → 0.45–0.49 s for an order-facts rule (docs/performance.md).
    """
    if not sample_size:
        return members.count(), []
    rows = list(members.annotate(members_total=Window(Count("pk"))).order_by("-last_order_at", "-id")
                .values_list("pk", "members_total")[:sample_size])
    return _counted_sample(rows)


def _preview_estimate(store: Store, tree: dict, as_of: dt.date | None, sample_size: int) -> Preview | None:
    """The rule evaluated for a random sample of the store's customer ids and scaled; None on a small store.

    Candidate ids are drawn from the store's id range (two probes of the (store, -id) index) and
    looked up by primary key, so neither the customers nor their count are read (counting alone took
    0.25 s at a million). The draw is seeded by store and day, so a query typed twice gets the same
    estimate. A random draw, not every k-th id: generated stores showed structure by id that made
    systematic samples err twice as much as the margin says (docs/performance.md).
    """
    bounds = _customer_id_bounds(store)
    if bounds["low"] is None:
        return None
    span = bounds["high"] - bounds["low"] + 1
    if span <= settings.PREVIEW_ESTIMATE_ABOVE:
        return None
    draw = random.Random(f"{store.pk}:{store_today(store)}")
    candidates = draw.sample(range(bounds["low"], bounds["high"] + 1), min(span, settings.PREVIEW_ESTIMATE_SAMPLE))
    ids = list(Customer.objects.filter(store=store, pk__in=candidates).values_list("pk", flat=True))
    scale = span / len(candidates)
    total = len(ids) * scale  # the store's customers, estimated from the same draw
    if total <= settings.PREVIEW_ESTIMATE_ABOVE:  # ids of other stores in between: not that large
        return None
    scope = rules.scope_from(customers_scope(ids, ESTIMATE_SCOPE_TABLE))
    context = evaluation_context(store=store, as_of=as_of, scope=scope)
    hits = list(rules.members_queryset(tree, context).order_by("-last_order_at", "-id").values_list("pk", flat=True))
    share = len(hits) / len(ids)
    # 95 % margin: normal approximation with the finite-population correction; a sample without hits
    # (or of only hits) still gets the margin of one customer in the sample.
    spread = max(share * (1 - share), 1 / len(ids)) / len(ids) * max(0.0, 1 - len(ids) / total)
    shown = Customer.objects.in_bulk(hits[:sample_size]) if sample_size else {}
    return Preview(count=round(len(hits) * scale), sample=[shown[pk] for pk in hits[:sample_size]],
                   query=to_text(tree), tree=tree, as_of=context.as_of, estimated=True,
                   margin=round(1.96 * total * math.sqrt(spread)), sampled=len(ids))


@dataclass
class ExplainLine:
    path: str
    condition: str
    matched: bool
    actual: Any


FACT_OF_FIELD = {
    "number_of_orders": "orders_count",
    "amount_spent": "amount_spent",
    "average_order_value": "average_order_value",
    "first_order_date": "first_order_at",
    "last_order_date": "last_order_at",
    "customer_added_date": "shopify_created_at",
    "customer_countries": "country_code",
    "customer_regions": "province_code",
    "customer_cities": "city",
    "email_subscription_status": "email_marketing",
    "sms_subscription_status": "sms_marketing",
    "first_order_discount_code": "first_order_discount_code",
    "first_order_source": "first_order_source",
    "first_order_utm_source": "first_order_utm_source",
    "first_order_utm_medium": "first_order_utm_medium",
    "first_order_utm_campaign": "first_order_utm_campaign",
}


@dataclass
class Explanation:
    matched: bool
    lines: list[ExplainLine]
    as_of: dt.date


def segment_explain(*, store: Store, tree: dict, customer: Customer, as_of: dt.date | None = None) -> Explanation:
    """For one customer: the whole rule's verdict and each condition's, with the value it read."""
    if customer.store_id != store.pk:
        raise ValueError("customer of another store")
    tree = rules.check(tree, segment_exists=segment_exists_checker(store))
    context = evaluation_context(store=store, as_of=as_of)
    one = rules.universe(context).filter(pk=customer.pk)
    lines = []
    for path, condition in rules.iter_conditions(tree):
        matched = one.filter(rules.compile_rule(condition, context)).exists()
        actual: Any = None
        if condition["field"] in FACT_OF_FIELD and not context.historical:
            actual = getattr(customer, FACT_OF_FIELD[condition["field"]])
        elif condition["field"] == "customer_tags":
            actual = sorted(customer.tags.values_list("name", flat=True))
        lines.append(ExplainLine(path=path, condition=to_text(condition), matched=matched, actual=actual))
    matched = one.filter(rules.compile_rule(tree, context)).exists()
    return Explanation(matched=matched, lines=lines, as_of=context.as_of)


def dependency_order(segments: Iterable[Segment]) -> tuple[list[Segment], list[Segment]]:
    """(segments ordered so each comes after those it refers to, segments caught in a cycle)."""
    by_slug = {s.slug: s for s in segments}
    needs = {
        s.slug: {ref for ref in rules.referenced_segments(s.rule) if ref in by_slug}
        if s.kind == SegmentKind.CONDITION and s.rule else set()
        for s in by_slug.values()
    }
    ordered: list[Segment] = []
    done: set[str] = set()
    while True:
        ready = sorted(slug for slug, deps in needs.items() if slug not in done and deps <= done)
        if not ready:
            break
        for slug in ready:
            ordered.append(by_slug[slug])
            done.add(slug)
    cyclic = [by_slug[slug] for slug in sorted(needs) if slug not in done]
    return ordered, cyclic


def dependency_waves(ordered: list[Segment]) -> list[list[Segment]]:
    """Segments in dependency order (``dependency_order``) grouped so each group only refers to segments
    of earlier groups: a group's segments can be evaluated together, or side by side."""
    level: dict[str, int] = {}
    waves: list[list[Segment]] = []
    for segment in ordered:  # references come first
        refs = rules.referenced_segments(segment.rule) if segment.kind == SegmentKind.CONDITION and segment.rule else set()
        level[segment.slug] = 1 + max((level[r] for r in refs if r in level), default=-1)
        if level[segment.slug] == len(waves):
            waves.append([])
        waves[level[segment.slug]].append(segment)
    return waves


def find_cycle(*, store: Store, slug: str, tree: dict) -> list[str] | None:
    """The chain of slugs that would loop back to ``slug`` if it had ``tree``, else None."""
    rules_by_slug = {
        s.slug: s.rule for s in Segment.objects.filter(store=store, kind=SegmentKind.CONDITION).only("slug", "rule")
    }
    rules_by_slug[slug] = tree

    def visit(current: str, chain: list[str]) -> list[str] | None:
        for ref in sorted(rules.referenced_segments(rules_by_slug.get(current) or {})):
            if ref == slug:
                return [*chain, ref]
            if ref not in chain and ref in rules_by_slug:
                found = visit(ref, [*chain, ref])
                if found:
                    return found
        return None

    return visit(slug, [slug])


def segment_members(segment: Segment) -> QuerySet[Customer]:
    """Everyone in the segment, held-out members of a list included."""
    return Customer.objects.filter(store_id=segment.store_id, memberships__segment=segment)


def segment_targets(segment: Segment) -> QuerySet[Customer]:
    """The members a campaign reaches: held-out members are left out (tag pushes use this)."""
    return Customer.objects.filter(
        store_id=segment.store_id,
        pk__in=Membership.objects.filter(segment=segment, holdout=False).values("customer_id"),
    )


def customer_memberships(customer: Customer) -> QuerySet[Membership]:
    """The segments and lists the customer is in, found through the store's segments: memberships are
    indexed by (segment, customer), not by customer alone (segments.models.Membership)."""
    return Membership.objects.filter(segment__store_id=customer.store_id, customer=customer).select_related("segment")


def segment_recent_events(segment: Segment, limit: int = 50) -> QuerySet[MembershipEvent]:
    return (
        MembershipEvent.objects.filter(segment=segment)
        .select_related("customer")
        .order_by("-date", "-id")[:limit]
    )


def segments_referring_to(segment: Segment) -> list[Segment]:
    """Condition segments of the same store whose rule uses ``in_segment(<segment's slug>)``."""
    return [
        other
        for other in Segment.objects.filter(store_id=segment.store_id, kind=SegmentKind.CONDITION).exclude(pk=segment.pk)
        if other.rule and segment.slug in rules.referenced_segments(other.rule)
    ]
