"""A month of daily runs, replayed: the backfill afterwards records exactly what each day recorded.

Each simulated day, that day's customers, orders and tag changes arrive; at the end of the day
(time frozen there) the live recompute runs as the daily run does, then the day's snapshot. After
the month, every snapshot is thrown away and the history is rebuilt from order and tag history as
of each past day; every field must match. The live recompute's joins and leaves must match too.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest
from django.utils import timezone

from ecpower.commerce.models import CustomerTag, CustomerTagEvent, TagEventAction
from ecpower.commerce.services import customer_facts_refresh
from metrics.models import SegmentSnapshot, SnapshotCursor
from metrics.snapshots import history_rebuild, snapshots_update
from segments.models import MembershipEvent
from segments.services import segment_create, store_segments_recompute
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

QUERIES = {
    "repeat": "number_of_orders >= 2",
    "recent": "last_order_date >= -7d",
    "big-not-vip": "amount_spent > 6000 AND NOT customer_tags CONTAINS 'vip'",
    "busy": "orders_placed MATCHES (date >= -10d, count >= 2)",
    "champions": "rfm_group = 'CHAMPIONS'",
    "prospects": "rfm_group = 'PROSPECTS'",
    "new-buyers": "first_order_date >= -10d",
    "vip-repeat": "in_segment('repeat') AND customer_tags CONTAINS 'vip'",
    "new-signups": "customer_added_date >= -5d",
    "aov": "average_order_value >= 3000 OR number_of_orders = 0",
}
FIELDS = ("members", "joined", "left", "orders", "revenue", "buyers", "repeat_rate", "ltv", "aov_customer",
          "aov_order", "avg_orders", "purchase_interval_days", "period_days")


def test_backfilled_history_equals_what_the_daily_runs_recorded(db, monkeypatch):
    rng = random.Random(7)
    store = StoreFactory(time_zone="Asia/Tokyo")
    zone = store.zone
    first_day = dt.date(2025, 6, 1)
    segments = {slug: segment_create(store=store, name=slug, slug=slug, query=q) for slug, q in QUERIES.items()}
    customers = []
    recorded = {}
    for n in range(30):
        day = first_day + dt.timedelta(days=n)
        noon = dt.datetime.combine(day, dt.time(12), tzinfo=zone)
        for _ in range(rng.randint(1, 3)):  # sign-ups of the day
            customers.append(CustomerFactory(store=store, shopify_created_at=noon - dt.timedelta(hours=3)))
        for _ in range(rng.randint(2, 6)):  # orders of the day
            buyer = rng.choice(customers)
            total = Decimal(rng.choice([800, 1500, 2600, 4200, 7000]))
            OrderFactory(
                store=store, customer=buyer, created_at=noon + dt.timedelta(minutes=rng.randint(-600, 600)),
                total=total, refunded_amount=total / 2 if rng.random() < 0.1 else Decimal(0),
                cancelled_at=noon if rng.random() < 0.05 else None, test=rng.random() < 0.03,
            )
        if rng.random() < 0.2:
            OrderFactory(store=store, customer=None, email="guest@example.jp", created_at=noon, total=Decimal(900))
        for customer in rng.sample(customers, k=min(2, len(customers))):  # tag changes of the day
            tagged = CustomerTag.objects.filter(customer=customer, name="vip")
            action = TagEventAction.REMOVED if tagged.exists() else TagEventAction.ADDED
            if action == TagEventAction.ADDED:
                CustomerTag.objects.create(store=store, customer=customer, name="vip")
            else:
                tagged.delete()
            CustomerTagEvent.objects.create(store=store, customer=customer, name="vip", action=action,
                                            occurred_at=noon + dt.timedelta(hours=2), source="webhook")
        customer_facts_refresh(store=store)

        # End of the day: the live recompute, then the day's snapshot.
        monkeypatch.setattr(timezone, "now", lambda day=day: dt.datetime.combine(
            day, dt.time(23, 59), tzinfo=zone).astimezone(dt.UTC))
        run = store_segments_recompute(store=store)
        assert not run.failed
        snapshots_update(store=store, until=day)
        for slug, segment in segments.items():
            row = SegmentSnapshot.objects.get(segment=segment, date=day)
            recorded[slug, day] = tuple(getattr(row, f) for f in FIELDS)
            if n:  # the first day's snapshot diffs against the day before the data, as a backfill does
                events = MembershipEvent.objects.filter(segment=segment, date=day)
                assert (row.joined, row.left) == (events.filter(kind="joined").count(),
                                                  events.filter(kind="left").count()), (slug, day)
                segment.refresh_from_db()
                assert row.members == segment.member_count, (slug, day)

    monkeypatch.undo()  # today is real again: every simulated day is now in the past
    SegmentSnapshot.objects.all().delete()
    SnapshotCursor.objects.all().delete()
    result = history_rebuild(store=store, since=first_day, until=first_day + dt.timedelta(days=29))
    assert result.days == 30 and not result.failed and not result.approximate
    rebuilt = {
        (row.segment.slug, row.date): tuple(getattr(row, f) for f in FIELDS)
        for row in SegmentSnapshot.objects.select_related("segment")
    }
    assert rebuilt == recorded
    assert len({v[0] for v in recorded.values()}) > 5  # the month actually moved the segments


@pytest.mark.django_db
def test_tag_rules_before_the_tag_history_are_flagged_approximate():
    store = StoreFactory(time_zone="Asia/Tokyo")
    customer = CustomerFactory(store=store)
    CustomerTag.objects.create(store=store, customer=customer, name="vip")
    first_import = dt.datetime(2025, 6, 10, 10, tzinfo=store.zone)
    CustomerTagEvent.objects.create(store=store, customer=customer, name="vip", action=TagEventAction.ADDED,
                                    occurred_at=first_import, source="import")
    vip = segment_create(store=store, name="vip", query="customer_tags CONTAINS 'vip'")
    result = history_rebuild(store=store, segments=[vip], since=dt.date(2025, 6, 8), until=dt.date(2025, 6, 11))
    rows = {r.date.day: r for r in SegmentSnapshot.objects.filter(segment=vip)}
    assert [rows[d].approximate for d in (8, 9, 10, 11)] == [True, True, False, False]
    assert [rows[d].members for d in (8, 9, 10, 11)] == [1, 1, 1, 1]  # read as on the history's first day
    assert "tags_before_history" in result.approximate["vip"]


@pytest.mark.django_db
def test_tag_history_decides_membership_on_each_past_day():
    store = StoreFactory(time_zone="Asia/Tokyo")
    customer = CustomerFactory(store=store)
    other = CustomerFactory(store=store)
    zone = store.zone
    CustomerTagEvent.objects.create(store=store, customer=other, name="x", action=TagEventAction.ADDED,
                                    occurred_at=dt.datetime(2025, 6, 1, tzinfo=zone), source="import")
    for day, action in ((3, TagEventAction.ADDED), (5, TagEventAction.REMOVED), (7, TagEventAction.ADDED)):
        CustomerTagEvent.objects.create(store=store, customer=customer, name="VIP", action=action,
                                        occurred_at=dt.datetime(2025, 6, day, 15, tzinfo=zone), source="webhook")
    CustomerTag.objects.create(store=store, customer=customer, name="VIP")
    vip = segment_create(store=store, name="vip", query="customer_tags CONTAINS 'vip'")
    history_rebuild(store=store, segments=[vip], since=dt.date(2025, 6, 2), until=dt.date(2025, 6, 8))
    members = {r.date.day: r.members for r in SegmentSnapshot.objects.filter(segment=vip)}
    assert members == {2: 0, 3: 1, 4: 1, 5: 0, 6: 0, 7: 1, 8: 1}
