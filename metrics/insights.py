"""Reads behind the insight pages, their CSV downloads and the API (docs/metrics.md).

Every function takes the store's objects and returns plain rows; each is a fixed number of
set-based queries, whatever the store's size.

* ``popular_tags``: customer tags in a segment, with their share there and in the whole store.
* ``top_products`` / ``top_product_types``: what a segment's members bought (``segment_products``: both).
* ``cohorts``: first-purchase-month cohorts with cumulative LTV, repeat rate and orders per customer.
* ``rfm_summary``: customers per RFM group and per R × FM cell.
* ``journey_transitions``: how many customers moved between a journey's stages in a window.
* ``campaign_results``: targets against holdout over a period, with lift and 95 % intervals.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from django.db import connection
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Coalesce, TruncMonth

from ecpower.commerce.models import Customer, CustomerTag, LineItem, Order, Store
from metrics.models import Journey
from metrics.pipeline import side_by_side
from metrics.snapshots import days_between_sql
from segments import rfm
from segments.models import Membership, MembershipEvent, MembershipEventKind, Segment
from segments.selectors import customer_id_ranges, store_today

Z95 = 1.96


def _ratio(part, whole, places: str = "0.0001") -> Decimal | None:
    if not whole:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(Decimal(places), ROUND_HALF_UP)


def _members(segment: Segment):
    return Membership.objects.filter(segment=segment).values("customer_id")


def _start(store: Store, day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=store.zone)


# --- popular tags -------------------------------------------------------------------------------------


def popular_tags(segment: Segment, limit: int = 100) -> list[dict]:
    """Top tags among members: members with it, their share, the store's share, and the lift."""
    store = segment.store
    members = Membership.objects.filter(segment=segment).count()
    everyone = Customer.objects.filter(store=store).count()
    rows = list(
        CustomerTag.objects.filter(store=store, customer_id__in=_members(segment))
        .values("name").annotate(members=Count("customer_id", distinct=True)).order_by("-members", "name")[:limit]
    )
    in_store = dict(
        CustomerTag.objects.filter(store=store, name__in=[r["name"] for r in rows]).values("name")
        .annotate(n=Count("customer_id", distinct=True)).values_list("name", "n")
    )
    for row in rows:
        row["share"] = _ratio(row["members"], members)
        row["store_customers"] = in_store.get(row["name"], 0)
        row["store_share"] = _ratio(row["store_customers"], everyone)
        row["lift"] = (row["share"] / row["store_share"]).quantize(Decimal("0.01"), ROUND_HALF_UP) \
            if row["share"] is not None and row["store_share"] else None
    return rows


# --- products -----------------------------------------------------------------------------------------


def _member_lines(segment: Segment, customers: list[int] | None = None):
    """The counted lines of the segment's members, or of ``customers`` among them (a sample)."""
    # The lines' copies of their order's customer and ordinal (kept by customer_facts_refresh, as
    # products_purchased reads them): no join with the orders (a segment of 60,000 members of 100,000
    # customers: 1.7 s → 1.2 s per table).
    return LineItem.objects.filter(store=segment.store, ordinal__isnull=False,
                                   customer_id__in=_members(segment) if customers is None else customers)


def _product_rows(lines, key: str, limit: int) -> list[dict]:
    return list(
        lines.values(key).annotate(
            orders=Count("order_id", distinct=True), buyers=Count("customer_id", distinct=True),
            units=Sum("quantity"), revenue=Sum(F("unit_price") * F("quantity") - F("discount")),
        ).order_by("-revenue", key)[:limit]
    )


def top_products(segment: Segment, limit: int = 50, *, customers: list[int] | None = None) -> list[dict]:
    """Products members (or ``customers`` among them) bought in counted orders, by revenue of their line items."""
    lines = _member_lines(segment, customers).annotate(product_name=Coalesce("product__title", "title"))
    return _product_rows(lines, "product_name", limit)


def top_product_types(segment: Segment, limit: int = 50, *, customers: list[int] | None = None) -> list[dict]:
    lines = _member_lines(segment, customers).annotate(type_name=Coalesce("product__product_type", "product_type"))
    return _product_rows(lines, "type_name", limit)


# Members above which a segment's products and product types are read side by side, each on its own connection
# (PostgreSQL): each reads every line of the members, a second of one core per 50,000 members or so.
PRODUCTS_SIDE_BY_SIDE_ABOVE = 20_000
# Members above which the products page estimates from a random sample of them unless asked for every member:
# every line of 591,000 members of a million customers took 17-28 s on two cores, a sample of 20,000 3 s.
PRODUCTS_SAMPLE_ABOVE = 100_000
PRODUCTS_SAMPLE_SIZE = 20_000


@dataclass
class SegmentProducts:
    products: list[dict]
    types: list[dict]
    members: int
    sampled: int | None = None  # the members read, when the figures are estimated from a sample of them

    @property
    def scale(self) -> Decimal | None:
        return Decimal(self.members) / Decimal(self.sampled) if self.sampled else None


def _member_sample(segment: Segment, size: int) -> tuple[list[int], int]:
    """``size`` of the segment's members drawn at random, and how many members there are. The same draw all
    day (seeded by segment and day), so the page and its CSV agree. Every member's id is read (the primary
    key's entries for the segment)."""
    ids = list(Membership.objects.filter(segment=segment).order_by("customer_id")
               .values_list("customer_id", flat=True))
    draw = random.Random(f"{segment.pk}:{store_today(segment.store)}")
    return sorted(draw.sample(ids, min(size, len(ids)))), len(ids)


def _scaled(rows: list[dict], scale: Decimal) -> list[dict]:
    """Each sample figure times ``scale``, as whole numbers (revenue to the currency unit)."""
    scaled = []
    for row in rows:
        scaled.append({**row, **{key: int((Decimal(row[key] or 0) * scale).to_integral_value(ROUND_HALF_UP))
                                 for key in ("orders", "buyers", "units")},
                       "revenue": (Decimal(row["revenue"] or 0) * scale).quantize(Decimal("1"), ROUND_HALF_UP)})
    return scaled


def segment_products(segment: Segment, limit: int = 50, *, exact: bool = False) -> SegmentProducts:
    """``top_products`` and ``top_product_types`` of a segment, as its products page and the API show them.

    Each reads and groups every line its members bought; for a large segment the two run side by side
    (``metrics.pipeline.side_by_side``, PostgreSQL outside a transaction), so the page takes about as long
    as the longer one (docs/performance.md: 4.7-5.3 s → 2.4-2.9 s for 55,000 members of 100,000 customers).
    Above ``PRODUCTS_SAMPLE_ABOVE`` members, unless ``exact``, both read ``PRODUCTS_SAMPLE_SIZE`` members
    drawn at random and every figure is scaled to the segment (``sampled`` says so).
    """
    members, sample = segment.member_count, None
    if not exact and members > PRODUCTS_SAMPLE_ABOVE:
        sample, members = _member_sample(segment, PRODUCTS_SAMPLE_SIZE)
    calls = (functools.partial(top_products, segment, limit, customers=sample),
             functools.partial(top_product_types, segment, limit, customers=sample))
    if sample is not None or members > PRODUCTS_SIDE_BY_SIDE_ABOVE:
        products, types = side_by_side(*calls)
    else:
        products, types = (call() for call in calls)
    found = SegmentProducts(products=products, types=types, members=members,
                            sampled=len(sample) if sample is not None else None)
    if found.scale is not None:
        found.products, found.types = _scaled(products, found.scale), _scaled(types, found.scale)
    return found


# --- cohorts ------------------------------------------------------------------------------------------


@dataclass
class Cohort:
    month: dt.date
    customers: int
    cells: list[dict] = field(default_factory=list)  # per month since first purchase: ltv, repeat_rate, orders


def _month_index(day) -> int:
    return day.year * 12 + day.month - 1


# Customers (a span of their ids) above which the cohorts are counted on two connections, each for a range of
# customer ids: one grouped pass over every counted order, about a second of one core per 100,000 customers.
COHORTS_IN_PARTS_ABOVE = 50_000


def _cohort_counts(store: Store, segment: Segment | None, id_range: tuple[int, int] | None = None
                   ) -> tuple[Counter, dict[tuple, dict]]:
    """Customers per first-purchase month, and per (that month, order month) the counted orders, their revenue
    net of refunds and the second orders, for the customers of ``id_range`` ([low, high)) or all of them."""
    zone = store.zone
    customers = Customer.objects.filter(store=store, orders_count__gt=0)
    orders = Order.objects.filter(store=store, customer__isnull=False, ordinal__isnull=False)
    if segment is not None:
        customers = customers.filter(pk__in=_members(segment))
        orders = orders.filter(customer_id__in=_members(segment))
    if id_range is not None:
        customers = customers.filter(pk__gte=id_range[0], pk__lt=id_range[1])
        orders = orders.filter(customer_id__gte=id_range[0], customer_id__lt=id_range[1])
    sizes = Counter(dict(customers.annotate(cohort=TruncMonth("first_order_at", tzinfo=zone)).values("cohort")
                         .annotate(n=Count("id")).values_list("cohort", "n")))
    cells = (orders.annotate(cohort=TruncMonth("customer__first_order_at", tzinfo=zone),
                             month=TruncMonth("created_at", tzinfo=zone))
             .values("cohort", "month")
             .annotate(orders=Count("id"), revenue=Sum(F("total") - F("refunded_amount")),
                       second=Count("id", filter=Q(ordinal=2))))
    return sizes, {(cell["cohort"], cell["month"]): cell for cell in cells}


def _cohort_counts_added(parts: list[tuple[Counter, dict[tuple, dict]]]) -> tuple[Counter, dict[tuple, dict]]:
    sizes: Counter = Counter()
    cells: dict[tuple, dict] = {}
    for part_sizes, part_cells in parts:
        sizes.update(part_sizes)
        for key, cell in part_cells.items():
            if key not in cells:
                cells[key] = dict(cell)
                continue
            total = cells[key]
            total["orders"] += cell["orders"]
            total["second"] += cell["second"]
            total["revenue"] = (total["revenue"] or 0) + (cell["revenue"] or 0)
    return sizes, cells


def cohorts(store: Store, segment: Segment | None = None, months: int = 12) -> list[Cohort]:
    """Customers by the month of their first counted order (store time), with cumulative KPIs per month since.

    On a large store (``COHORTS_IN_PARTS_ABOVE``, PostgreSQL) each half of the customers is counted on its own
    connection, side by side, and the halves added (docs/performance.md).
    """
    ranges = None
    if segment is None or segment.member_count > COHORTS_IN_PARTS_ABOVE:
        ranges = customer_id_ranges(store, above=COHORTS_IN_PARTS_ABOVE)
    if ranges is None:
        sizes, cells = _cohort_counts_added([_cohort_counts(store, segment)])
    else:
        sizes, cells = _cohort_counts_added(
            side_by_side(*(functools.partial(_cohort_counts, store, segment, part) for part in ranges)))
    by_cohort: dict[dt.date, dict[int, dict]] = {}
    for cell in cells.values():
        start = cell["cohort"].date() if isinstance(cell["cohort"], dt.datetime) else cell["cohort"]
        month = cell["month"].date() if isinstance(cell["month"], dt.datetime) else cell["month"]
        by_cohort.setdefault(start, {})[_month_index(month) - _month_index(start)] = cell
    this_month = _month_index(store_today(store))
    result = []
    for start_value, size in sorted(sizes.items()):
        start = start_value.date() if isinstance(start_value, dt.datetime) else start_value
        cohort = Cohort(month=start, customers=size)
        revenue, orders_so_far, repeaters = Decimal(0), 0, 0
        for offset in range(min(months, this_month - _month_index(start)) + 1):
            cell = by_cohort.get(start, {}).get(offset)
            if cell:
                revenue += Decimal(str(cell["revenue"] or 0))
                orders_so_far += cell["orders"]
                repeaters += cell["second"]
            cohort.cells.append({
                "offset": offset,
                "ltv": (revenue / size).quantize(Decimal("0.01"), ROUND_HALF_UP),
                "repeat_rate": _ratio(repeaters, size),
                "orders_per_customer": _ratio(orders_so_far, size, "0.01"),
            })
        result.append(cohort)
    return result


# --- RFM ----------------------------------------------------------------------------------------------


@dataclass
class RfmSummary:
    customers: int
    groups: list[dict]  # group, label, customers, share, orders, spent, avg_days_since_last_order
    grid: dict[int, list[int]]  # fm → customers for r = 1..5


def rfm_summary(store: Store, segment: Segment | None = None, now: dt.datetime | None = None) -> RfmSummary:
    """Customers per RFM group (Shopify's eleven) and per R × FM cell, now."""
    from django.utils import timezone

    now = connection.ops.adapt_datetimefield_value(now or timezone.now())
    scores, params = rfm.scores_sql(store.pk, None)
    where, extra = "", []
    if segment is not None:
        where = f"WHERE customer_id IN (SELECT customer_id FROM {Membership._meta.db_table} WHERE segment_id = %s)"
        extra = [segment.pk]
    now_sql = "CAST(%s AS timestamptz)" if connection.vendor == "postgresql" else "%s"
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT grp, r, (f + m + 1) / 2, COUNT(*), SUM(n), SUM(spent), SUM({days_between_sql(now_sql, 'last_at')})
                FROM ({scores}) rfm {where} GROUP BY grp, r, (f + m + 1) / 2""",
            [now, *params, *extra],
        )
        rows = cursor.fetchall()
    prospects = Customer.objects.filter(store=store, orders_count=0)
    if segment is not None:
        prospects = prospects.filter(pk__in=_members(segment))
    prospect_count = prospects.count()
    totals: dict[str, list] = {g: [0, 0, Decimal(0), 0.0] for g in rfm.GROUPS}
    grid = {fm: [0] * 5 for fm in range(5, 0, -1)}
    for group, r, fm, count, orders, spent, days in rows:
        total = totals[group]
        total[0] += count
        total[1] += int(orders or 0)
        total[2] += Decimal(str(spent or 0))
        total[3] += float(days or 0)
        grid[int(fm)][int(r) - 1] += count
    totals["PROSPECTS"][0] = prospect_count
    everyone = sum(t[0] for t in totals.values())
    groups = [{
        "group": group, "label": str(rfm.GROUP_LABELS[group]), "customers": t[0], "share": _ratio(t[0], everyone),
        "orders": t[1], "spent": t[2].quantize(Decimal("0.01")),
        "avg_days_since_last_order": round(t[3] / t[0], 1) if t[0] and group != "PROSPECTS" else None,
    } for group, t in totals.items()]
    return RfmSummary(customers=everyone, groups=groups, grid=grid)


# --- journeys -----------------------------------------------------------------------------------------

OUTSIDE = "outside"


@dataclass
class JourneyReport:
    stages: list[Segment]
    start: dt.date
    end: dt.date
    members: dict[int, int]  # stage segment id → members now
    moves: dict[tuple, int]  # (from segment id | OUTSIDE, to segment id | OUTSIDE) → customers

    def matrix(self) -> list[tuple[str, list[int]]]:
        keys = [s.pk for s in self.stages] + [OUTSIDE]
        return [(source, [self.moves.get((source, target), 0) for target in keys]) for source in keys]


def journey_transitions(journey: Journey, start: dt.date | None = None, end: dt.date | None = None
                        ) -> JourneyReport:
    """Customers who moved from stage A to stage B in [start, end] (default: the last 7 days).

    A move A → B is a join of B on day d by a customer who was in A at the end of day d − 1. Joins of B
    from no stage come from ``outside``; leaves of A with no join of another stage that day or later in
    the window go ``outside``.

    Only the stages' events from ``start`` on are read (by segment and date, the index every event
    insert extends at its end): a customer was in A at the end of d − 1 if their first event of A from d
    on is a leave, or, without one, if they are in A today. So no index of the events by customer is
    needed: one cost every recompute a random index page per join or leave (docs/performance.md).
    """
    stages = [stage.segment for stage in journey.stages.select_related("segment")]
    end = end or store_today(journey.store)
    start = start or end - dt.timedelta(days=6)
    ids = ", ".join(str(int(s.pk)) for s in stages) or "NULL"
    events, memberships = MembershipEvent._meta.db_table, Membership._meta.db_table
    joined, left = MembershipEventKind.JOINED, MembershipEventKind.LEFT
    moves: dict[tuple, int] = {}
    with connection.cursor() as cursor:
        # For each join of a stage B and each other stage A: A's first event of that customer from the join's
        # day on, if any (a leave: they were in A); else their membership of A today.
        cursor.execute(
            f"""WITH recent AS (
                    SELECT segment_id, customer_id, date, id, kind FROM {events}
                    WHERE segment_id IN ({ids}) AND date >= %s),
                joins AS (  -- from the table, not from recent: the planner then knows how many
                    SELECT segment_id AS b, customer_id, date FROM {events}
                    WHERE segment_id IN ({ids}) AND kind = %s AND date >= %s AND date <= %s),
                later AS (
                    SELECT e.segment_id AS a, j.b, j.customer_id, e.kind,
                           ROW_NUMBER() OVER (PARTITION BY j.b, j.customer_id, j.date, e.segment_id
                                              ORDER BY e.date, e.id) AS n
                    FROM joins j JOIN recent e ON e.customer_id = j.customer_id AND e.segment_id <> j.b
                         AND e.date >= j.date)
                SELECT a, b, COUNT(DISTINCT customer_id) FROM (
                    SELECT a, b, customer_id FROM later WHERE n = 1 AND kind = %s
                    UNION ALL
                    SELECT m.segment_id, j.b, j.customer_id FROM joins j JOIN {memberships} m
                        ON m.customer_id = j.customer_id AND m.segment_id IN ({ids}) AND m.segment_id <> j.b
                    WHERE NOT EXISTS (SELECT 1 FROM recent e WHERE e.segment_id = m.segment_id
                                      AND e.customer_id = j.customer_id AND e.date >= j.date)
                ) AS moved
                GROUP BY a, b""",
            [start, joined, start, end, left],
        )
        for source, target, count in cursor.fetchall():
            moves[source, target] = count
        cursor.execute(
            f"""SELECT j.segment_id, COUNT(DISTINCT j.customer_id) FROM {events} j
                WHERE j.segment_id IN ({ids}) AND j.kind = %s AND j.date >= %s AND j.date <= %s
                GROUP BY j.segment_id""",
            [joined, start, end],
        )
        arrivals = dict(cursor.fetchall())
        cursor.execute(
            f"""SELECT l.segment_id, COUNT(DISTINCT l.customer_id) FROM {events} l
                WHERE l.segment_id IN ({ids}) AND l.kind = %s AND l.date >= %s AND l.date <= %s
                  AND NOT EXISTS (SELECT 1 FROM {events} o WHERE o.customer_id = l.customer_id
                      AND o.segment_id IN ({ids}) AND o.segment_id <> l.segment_id AND o.kind = %s
                      AND o.date >= l.date AND o.date <= %s)
                GROUP BY l.segment_id""",
            [left, start, end, joined, end],
        )
        for source, count in cursor.fetchall():
            moves[source, OUTSIDE] = count
    for stage in stages:
        from_stages = sum(count for (source, target), count in moves.items() if target == stage.pk
                          and source != OUTSIDE)
        entered = arrivals.get(stage.pk, 0) - from_stages
        if entered > 0:
            moves[OUTSIDE, stage.pk] = entered
    members = {s.pk: s.member_count for s in stages}
    return JourneyReport(stages=stages, start=start, end=end, members=members, moves=moves)


# --- campaigns ----------------------------------------------------------------------------------------


@dataclass
class GroupResult:
    customers: int
    buyers: int
    orders: int
    revenue: Decimal
    revenue_squares: float

    @property
    def conversion(self) -> float | None:
        return self.buyers / self.customers if self.customers else None

    @property
    def revenue_per_member(self) -> float | None:
        return float(self.revenue) / self.customers if self.customers else None

    @property
    def revenue_variance(self) -> float | None:
        if self.customers < 2:
            return None
        mean = float(self.revenue) / self.customers
        return max(0.0, (self.revenue_squares - self.customers * mean * mean) / (self.customers - 1))


@dataclass
class CampaignResult:
    segment: Segment
    start: dt.date
    end: dt.date
    targets: GroupResult
    holdout: GroupResult | None

    def _difference(self, value, spread):
        """(difference, its 95 % interval (low, high), lift) between targets and holdout."""
        if self.holdout is None or not self.holdout.customers or not self.targets.customers:
            return None, None, None
        treated, control = value(self.targets), value(self.holdout)
        difference = treated - control
        error = math.sqrt(spread(self.targets) + spread(self.holdout))
        lift = (treated / control - 1) if control else None
        return difference, (difference - Z95 * error, difference + Z95 * error), lift

    @property
    def conversion_difference(self):
        def spread(g):
            p = g.conversion
            return p * (1 - p) / g.customers

        return self._difference(lambda g: g.conversion, spread)

    @property
    def revenue_difference(self):
        def spread(g):
            return (g.revenue_variance or 0.0) / g.customers

        return self._difference(lambda g: g.revenue_per_member, spread)

    @property
    def incremental_revenue(self) -> float | None:
        difference = self.revenue_difference[0]
        return None if difference is None else difference * self.targets.customers

    def as_dict(self) -> dict:
        def group(g: GroupResult | None):
            if g is None:
                return None
            return {"customers": g.customers, "buyers": g.buyers, "orders": g.orders, "revenue": str(g.revenue),
                    "conversion": g.conversion, "revenue_per_member": g.revenue_per_member}

        conversion, conversion_ci, conversion_lift = self.conversion_difference
        revenue, revenue_ci, revenue_lift = self.revenue_difference
        return {
            "segment": self.segment.pk, "slug": self.segment.slug, "start": self.start.isoformat(),
            "end": self.end.isoformat(), "targets": group(self.targets), "holdout": group(self.holdout),
            "conversion_difference": conversion, "conversion_interval": conversion_ci,
            "conversion_lift": conversion_lift, "revenue_per_member_difference": revenue,
            "revenue_per_member_interval": revenue_ci, "revenue_per_member_lift": revenue_lift,
            "incremental_revenue": self.incremental_revenue,
        }


def campaign_results(segment: Segment, start: dt.date, end: dt.date) -> CampaignResult:
    """Orders and revenue of the segment's targets and holdout from ``start`` to ``end`` (inclusive, store days).

    Members are the segment's current ones: a list frozen at the campaign's start measures the
    campaign; a condition segment measures whoever is in it now.
    """
    store = segment.store
    begin = connection.ops.adapt_datetimefield_value(_start(store, start))
    finish = connection.ops.adapt_datetimefield_value(_start(store, end + dt.timedelta(days=1)))
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT m.holdout, COUNT(*), COUNT(p.customer_id), SUM(p.n), SUM(p.revenue),
                       SUM(p.revenue * p.revenue)
                FROM {Membership._meta.db_table} m LEFT JOIN (
                    SELECT customer_id, COUNT(*) AS n, SUM(total - refunded_amount) AS revenue
                    FROM {Order._meta.db_table}
                    WHERE store_id = %s AND customer_id IS NOT NULL AND ordinal IS NOT NULL
                      AND created_at >= %s AND created_at < %s
                    GROUP BY customer_id) p ON p.customer_id = m.customer_id
                WHERE m.segment_id = %s GROUP BY m.holdout""",
            [store.pk, begin, finish, segment.pk],
        )
        rows = {bool(row[0]): row[1:] for row in cursor.fetchall()}

    def group(row) -> GroupResult:
        customers, buyers, orders, revenue, squares = row
        return GroupResult(customers=customers, buyers=buyers, orders=int(orders or 0),
                           revenue=Decimal(str(revenue or 0)).quantize(Decimal("0.01")),
                           revenue_squares=float(squares or 0))

    empty = (0, 0, 0, 0, 0)
    return CampaignResult(segment=segment, start=start, end=end, targets=group(rows.get(False, empty)),
                          holdout=group(rows[True]) if True in rows else None)
