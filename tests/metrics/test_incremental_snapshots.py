"""Snapshots evaluate a day only for the customers whose verdicts can move; everyone else keeps the
day before's verdict (metrics.snapshots, "who may have changed").

Two identical stores live through the same two weeks: orders, sign-ups and tag changes of the day,
and changes that reach us late (refunds, cancellations, a moved customer, a withdrawn consent, an
edited line item, a retagged product, a back-dated tag event, a deleted customer). One store's daily
runs evaluate incrementally, the other's evaluate every customer every day. Every snapshot and the
kept members must be equal, for rules of every family, relative dates with every operator included.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest
from django.utils import timezone

from ecpower.commerce.models import (
    Customer,
    CustomerTag,
    CustomerTagEvent,
    LineItem,
    Order,
    ProductTag,
    TagEventAction,
)
from ecpower.commerce.services import customer_facts_refresh, line_copies_clear
from metrics import snapshots
from metrics.models import SegmentSnapshot, SnapshotMember
from segments import services
from segments.models import Membership
from segments.services import segment_create
from tests.factories import CustomerFactory, LineItemFactory, OrderFactory, ProductFactory, StoreFactory
from tests.metrics.test_backfill import FIELDS

QUERIES = {
    "recent": "last_order_date >= -7d",
    "lapsed": "number_of_orders >= 1 AND last_order_date < -10d",
    "window": "last_order_date BETWEEN -20d AND -5d",
    "first-after": "first_order_date > -14d",
    "first-on": "first_order_date = -3d",
    "last-month": "last_order_date > -1m",
    "yesterday": "last_order_date = yesterday",
    "until-last-week": "last_order_date <= -1w",
    "new-signups": "customer_added_date >= -5d",
    "not-signed-2d": "customer_added_date != -2d",
    "repeat": "number_of_orders >= 2",
    "spend": "amount_spent >= 5000",
    "aov": "average_order_value >= 3000",
    "tea-recent": "products_purchased MATCHES (tag = 'tea', date >= -10d)",
    "tea-2x": "products_purchased MATCHES (tag = 'tea', date > -15d, count >= 2)",
    "tea-first": "products_purchased MATCHES (tag = 'tea', order_number = 1)",
    "quiet-week": "products_purchased NOT MATCHES (date > -1w) AND number_of_orders >= 1",
    "busy": "orders_placed MATCHES (date BETWEEN -12d AND -2d, count >= 2)",
    "welcome": "orders_placed MATCHES (discount_code = 'WELCOME')",
    "tokyo": "customer_regions CONTAINS 'JP-13'",
    "subscribed": "email_subscription_status = 'SUBSCRIBED'",
    "vip": "customer_tags CONTAINS 'vip'",
    "champions": "rfm_group = 'CHAMPIONS'",
    "prospects": "rfm_group = 'PROSPECTS'",
    "vip-repeat": "in_segment('repeat') AND customer_tags CONTAINS 'vip'",
    "lapsed-no-tea": "in_segment('lapsed') AND NOT in_segment('tea-recent')",
    "champion-tokyo": "in_segment('champions') AND in_segment('tokyo')",
}
FIRST_DAY = dt.date(2025, 6, 1)
DAYS = 14


class Shop:
    """One store and the same deterministic life as its twin: ``day(n)`` applies day n's events."""

    def __init__(self):
        self.store = StoreFactory(time_zone="Asia/Tokyo")
        zone = self.store.zone
        self.tea = ProductFactory(store=self.store)
        ProductTag.objects.create(store=self.store, product=self.tea, name="tea")
        self.ware = ProductFactory(store=self.store)
        self.customers: list[Customer] = []
        self.born = 0  # customers ever created; ``number`` names each by its place, the same in both twins
        self.number: dict[int, int] = {}
        rng = random.Random(1)
        start = dt.datetime.combine(FIRST_DAY - dt.timedelta(days=45), dt.time(12), tzinfo=zone)
        for n in range(30):
            self.customer_add(shopify_created_at=start + dt.timedelta(days=n),
                              province_code=rng.choice(["JP-13", "JP-27"]),
                              email_marketing=rng.choice(["SUBSCRIBED", "NOT_SUBSCRIBED"]))
        CustomerTagEvent.objects.create(store=self.store, customer=self.customers[0], name="vip",
                                        action=TagEventAction.ADDED, occurred_at=start, source="import")
        CustomerTag.objects.create(store=self.store, customer=self.customers[0], name="vip")
        for n in range(60):
            customer = rng.choice(self.customers)
            self.order(customer, start + dt.timedelta(days=n * 0.7 + 1, hours=rng.randint(-3, 3)), rng)
        customer_facts_refresh(store=self.store)

    def customer_add(self, **fields) -> None:
        customer = CustomerFactory(store=self.store, **fields)
        self.customers.append(customer)
        self.number[customer.pk] = self.born
        self.born += 1

    def order(self, customer, at, rng) -> Order:
        if at < customer.shopify_created_at:
            at = customer.shopify_created_at + dt.timedelta(hours=1)
        total = Decimal(rng.choice([800, 1500, 2600, 4200, 7000]))
        order = OrderFactory(store=self.store, customer=customer, created_at=at, total=total,
                             discount_code="WELCOME" if rng.random() < 0.15 else "")
        LineItemFactory(order=order, product=self.tea if rng.random() < 0.5 else self.ware)
        return order

    def day(self, n: int) -> None:
        """Day n: its own events, then changes that reach us late; facts refreshed as an ingest does."""
        rng = random.Random(100 + n)
        zone = self.store.zone
        day = FIRST_DAY + dt.timedelta(days=n)
        noon = dt.datetime.combine(day, dt.time(12), tzinfo=zone)
        touched = set()
        for _ in range(rng.randint(0, 2)):  # sign-ups
            self.customer_add(shopify_created_at=noon - dt.timedelta(hours=2), province_code="JP-13")
        for _ in range(rng.randint(1, 4)):  # orders of the day
            customer = rng.choice(self.customers)
            self.order(customer, noon + dt.timedelta(minutes=rng.randint(-300, 300)), rng)
            touched.add(customer.pk)
        customer = rng.choice(self.customers)  # a tag change of the day
        self.toggle_vip(customer, noon + dt.timedelta(hours=1))
        late = n % 7
        older = list(Order.objects.filter(store=self.store, created_at__lt=noon - dt.timedelta(days=2))
                     .order_by("pk"))
        victim = older[rng.randrange(len(older))]
        if late == 1:  # a refund on an old order
            Order.objects.filter(pk=victim.pk).update(refunded_amount=victim.total / 2)
            touched.add(victim.customer_id)
        elif late == 2:  # a customer moves to Tokyo; another withdraws consent
            Customer.objects.filter(pk=rng.choice(self.customers).pk).update(province_code="JP-13")
            Customer.objects.filter(pk=rng.choice(self.customers).pk).update(email_marketing="UNSUBSCRIBED")
        elif late == 3:  # an old order's line is edited to another product: no fact moves
            LineItem.objects.filter(order=victim).update(
                product=self.ware if LineItem.objects.filter(order=victim, product=self.tea).exists() else self.tea)
            # As every writer of lines does: its products are known again from its lines at the facts refresh.
            Order.objects.filter(pk=victim.pk).update(product_ids=None)
            touched.add(victim.customer_id)
        elif late == 4:  # an old order is cancelled
            Order.objects.filter(pk=victim.pk).update(cancelled_at=noon)
            touched.add(victim.customer_id)
        elif late == 5:  # the catalogue: another product becomes tea
            ProductTag.objects.get_or_create(store=self.store, product=self.ware, name="tea")
        elif late == 6:  # a tag event recorded today for three days ago; a customer is deleted
            self.toggle_vip(rng.choice(self.customers), noon - dt.timedelta(days=3))
            gone = self.customers.pop(rng.randrange(len(self.customers)))
            touched.discard(gone.pk)
            gone.delete()
        elif late == 0 and n:  # an old order moves to another customer
            other = rng.choice(self.customers)
            Order.objects.filter(pk=victim.pk).update(customer=other)
            line_copies_clear(order_ids=[victim.pk])  # as every ingest path does
            touched |= {victim.customer_id, other.pk}
        customer_facts_refresh(store=self.store, customer_ids=touched - {None})

    def toggle_vip(self, customer, when) -> None:
        tagged = CustomerTag.objects.filter(customer=customer, name="vip")
        action = TagEventAction.REMOVED if tagged.exists() else TagEventAction.ADDED
        if action == TagEventAction.ADDED:
            CustomerTag.objects.create(store=self.store, customer=customer, name="vip")
        else:
            tagged.delete()
        CustomerTagEvent.objects.create(store=self.store, customer=customer, name="vip", action=action,
                                        occurred_at=when, source="webhook")


def recorded(store) -> dict:
    return {(row.segment.slug, row.date): tuple(getattr(row, f) for f in FIELDS)
            for row in SegmentSnapshot.objects.filter(store=store).select_related("segment")}


def named(shop: Shop, model) -> dict:
    """Each segment's rows of ``model`` (kept snapshot members, memberships) as sets of customers named by
    their place in the twins' common life."""
    found: dict[str, set[int]] = {}
    for slug, customer in model.objects.filter(store=shop.store).values_list("segment__slug", "customer_id"):
        found.setdefault(slug, set()).add(shop.number[customer])
    return found


@pytest.mark.django_db
def test_incremental_days_equal_evaluating_every_customer(monkeypatch, settings):
    shops = {True: Shop(), False: Shop()}  # incremental or not
    for shop in shops.values():
        for slug, query in QUERIES.items():
            segment_create(store=shop.store, name=slug, slug=slug, query=query)
    evaluated_for = []  # (day, segments evaluated for some customers only) of the incremental store
    evaluate = snapshots._evaluate

    def spy(cursor, store, segments, day, result, *, keys, work):
        if store.pk == shops[True].store.pk:
            evaluated_for.append((day, len(keys)))
        return evaluate(cursor, store, segments, day, result, keys=keys, work=work)

    monkeypatch.setattr(snapshots, "_evaluate", spy)
    for n in range(DAYS):
        day = FIRST_DAY + dt.timedelta(days=n)
        for incremental, shop in shops.items():
            if n:
                shop.day(n)
            monkeypatch.setattr(timezone, "now", lambda day=day, zone=shop.store.zone: dt.datetime.combine(
                day + dt.timedelta(days=1), dt.time(2), tzinfo=zone).astimezone(dt.UTC))
            settings.SNAPSHOTS_INCREMENTAL = incremental
            result = snapshots.snapshots_update(store=shop.store, until=day)
            assert not result.failed
        assert named(shops[True], SnapshotMember) == named(shops[False], SnapshotMember), day

    ours, theirs = recorded(shops[True].store), recorded(shops[False].store)
    assert ours == theirs
    daily = [n for day, n in evaluated_for if day > FIRST_DAY]
    # The daily runs really were incremental: every segment but the RFM one and the one referring to it,
    # except on the day the catalogue changed (everyone is evaluated then).
    assert sorted(set(daily)) == [0, len(QUERIES) - 2], daily
    assert daily.count(0) == 1  # day 5: "another product becomes tea" (day 12 finds it tea already)
    moved = {slug for (slug, day), values in ours.items() if day > FIRST_DAY and (values[1] or values[2])}
    assert len(moved) >= 20, sorted(set(QUERIES) - moved)  # the weeks moved nearly every segment


def test_every_customer_column_a_rule_reads_is_digested():
    """A column a condition reads but the digest leaves out would let a late change go unseen."""
    from segments import rules

    reads = set()
    table = Customer._meta.db_table
    store = StoreFactory.build(pk=1, time_zone="Asia/Tokyo")
    for historical in (False, True):
        context = rules.EvaluationContext(
            store=store, as_of=dt.date(2025, 6, 1) if historical else dt.date(2025, 6, 2), today=dt.date(2025, 6, 2),
            segment=lambda slug: None, product_ids=lambda name, values: [1])
        for name, spec in rules.FIELDS.items():
            if spec.kind in ("function", "segment") or name == "rfm_group" or name in rules.MAPPED_ATTRIBUTES:
                continue
            op = spec.ops[0]
            value = {"integer": 1, "decimal": 1, "date": "-3d", "enum": (spec.choices or ("x",))[0]}.get(
                spec.kind, "x")
            tree = {"field": name, "op": op, "value": value}
            if op in ("is_null", "is_not_null"):
                tree.pop("value")
            sql = str(rules.members_queryset(rules.check(tree), context).values("id").query)
            reads |= {column for column in (f.column for f in Customer._meta.concrete_fields)
                      if f'"{table}"."{column}"' in sql}
    assert reads - {"id", "store_id"} <= set(rules.CUSTOMER_COLUMNS), reads - set(rules.CUSTOMER_COLUMNS)
    assert {"province_code", "email_marketing", "orders_count", "shopify_created_at"} <= reads


@pytest.mark.django_db
def test_the_daily_recompute_equals_recomputing_everyone(monkeypatch, settings):
    """The same two weeks, with the daily recompute (as of each day's end) instead of snapshots."""
    shops = {True: Shop(), False: Shop()}
    for shop in shops.values():
        for slug, query in QUERIES.items():
            segment_create(store=shop.store, name=slug, slug=slug, query=query)
    scoped = []  # (day, segments evaluated for some customers only) of the incremental store
    recompute = services.segment_recompute

    def spy(*, segment, as_of=None, scope=None, lines=None):
        if segment.store_id == shops[True].store.pk:
            scoped.append((services.store_today(segment.store), scope is not None))
        return recompute(segment=segment, as_of=as_of, scope=scope, lines=lines)

    together = services.segments_recompute_together

    def spy_together(segments, *, scope):  # the segments of one wave that evaluate the same customers
        scoped.extend((services.store_today(s.store), True) for s in segments if s.store_id == shops[True].store.pk)
        return together(segments, scope=scope)

    monkeypatch.setattr(services, "segment_recompute", spy)
    monkeypatch.setattr(services, "segments_recompute_together", spy_together)
    monkeypatch.setattr(services, "SCOPED_SHARE_MAX", 1.0)  # a small store: every day has a large share
    moved = set()
    for n in range(DAYS):
        day = FIRST_DAY + dt.timedelta(days=n)
        moves = {}
        for incremental, shop in shops.items():
            if n:
                shop.day(n)
            monkeypatch.setattr(timezone, "now", lambda day=day, zone=shop.store.zone: dt.datetime.combine(
                day, dt.time(23), tzinfo=zone).astimezone(dt.UTC))
            settings.SEGMENTS_INCREMENTAL = incremental
            done = services.store_segments_refresh(store=shop.store)
            assert not done.failed
            moves[incremental] = {r.slug: (r.joined, r.left, r.members) for r in done.results}
        assert moves[True] == moves[False], day
        assert named(shops[True], Membership) == named(shops[False], Membership), day
        moved |= {slug for slug, (joined, left, _count) in moves[True].items() if n and (joined or left)}

    later = [narrow for day, narrow in scoped if day > FIRST_DAY]
    # Every day after the first, all but the RFM segment and the one referring to it were evaluated
    # for some customers only, but on the day after the catalogue changed.
    assert later.count(True) == (DAYS - 2) * (len(QUERIES) - 2), later
    assert len(moved) >= 20, sorted(set(QUERIES) - moved)  # the weeks moved nearly every segment


@pytest.mark.django_db
def test_a_daily_recompute_touching_many_customers_recomputes_everyone(monkeypatch):
    shop = Shop()
    segment_create(store=shop.store, name="recent", slug="recent", query=QUERIES["recent"])
    scopes = []
    recompute = services.segment_recompute

    def spy(*, segment, as_of=None, scope=None, lines=None):
        scopes.append(scope)
        return recompute(segment=segment, as_of=as_of, scope=scope, lines=lines)

    monkeypatch.setattr(services, "segment_recompute", spy)
    for n, share in ((0, 1.0), (1, 1.0), (2, 0.0)):
        day = FIRST_DAY + dt.timedelta(days=n)
        if n:
            shop.day(n)
        monkeypatch.setattr(services, "SCOPED_SHARE_MAX", share)
        monkeypatch.setattr(timezone, "now", lambda day=day: dt.datetime.combine(
            day, dt.time(23), tzinfo=shop.store.zone).astimezone(dt.UTC))
        services.store_segments_refresh(store=shop.store)
    # First day: no baseline yet; second: a few customers; third: any share is too many.
    assert [scope is not None for scope in scopes] == [False, True, False]
    # The daily run's step gives its own limit (beside the snapshots): with room, the same day is scoped.
    scopes.clear()
    shop.day(3)
    monkeypatch.setattr(timezone, "now", lambda: dt.datetime.combine(
        FIRST_DAY + dt.timedelta(days=3), dt.time(23), tzinfo=shop.store.zone).astimezone(dt.UTC))
    services.store_segments_refresh(store=shop.store, scoped_share_max=1.0)
    assert [scope is not None for scope in scopes] == [True]


@pytest.mark.django_db
def test_a_changed_rule_is_evaluated_for_everyone_by_the_next_daily_recompute(monkeypatch):
    shop = Shop()
    segment = segment_create(store=shop.store, name="recent", slug="recent", query=QUERIES["recent"])
    monkeypatch.setattr(services, "SCOPED_SHARE_MAX", 1.0)
    monkeypatch.setattr(timezone, "now", lambda: dt.datetime.combine(
        FIRST_DAY, dt.time(23), tzinfo=shop.store.zone).astimezone(dt.UTC))
    services.store_segments_refresh(store=shop.store)  # leaves a baseline
    services.segment_update(segment=segment, query="number_of_orders >= 2")  # its recompute not run yet
    services.store_segments_refresh(store=shop.store)
    stored = set(Membership.objects.filter(segment=segment).values_list("customer_id", flat=True))
    assert stored == set(Customer.objects.filter(store=shop.store, orders_count__gte=2).values_list("id", flat=True))
