"""Snapshot KPIs against hand-computed values (docs/metrics.md has the same worked example)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from ecpower.commerce.services import customer_facts_refresh
from metrics.models import SegmentSnapshot, SnapshotCursor, SnapshotMember, SnapshotSource
from metrics.snapshots import SnapshotResult, _walk, history_rebuild, snapshot_days, snapshots_update
from segments.services import segment_create
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

JST = dt.timezone(dt.timedelta(hours=9))


def at(day: int, hour: int = 10) -> dt.datetime:
    return dt.datetime(2025, 3, day, hour, tzinfo=JST)


@pytest.fixture
def shop(db):
    """A: two orders (one partly refunded); B: one order and a cancelled one; C, D: no counted orders."""
    store = StoreFactory(time_zone="Asia/Tokyo")
    a, b, c, d = (CustomerFactory(store=store) for _ in range(4))
    OrderFactory(store=store, customer=a, created_at=at(1), total=Decimal(3000))
    OrderFactory(store=store, customer=a, created_at=at(11), total=Decimal(5000), refunded_amount=Decimal(1000))
    OrderFactory(store=store, customer=b, created_at=at(5), total=Decimal(2000))
    OrderFactory(store=store, customer=b, created_at=at(6), total=Decimal(9999), cancelled_at=at(6, 12))
    OrderFactory(store=store, customer=None, email="guest@example.jp", created_at=at(11), total=Decimal(8000))
    OrderFactory(store=store, customer=d, created_at=at(11), total=Decimal(7000), test=True)
    customer_facts_refresh(store=store)
    segments = {
        "buyers": segment_create(store=store, name="buyers", query="number_of_orders >= 1"),
        "everyone": segment_create(store=store, name="everyone", query="number_of_orders >= 0"),
        "recent": segment_create(store=store, name="recent", query="last_order_date >= -3d"),
    }
    return store, segments, (a, b, c, d)


def snap(segment, day) -> SegmentSnapshot:
    return SegmentSnapshot.objects.get(segment=segment, date=dt.date(2025, 3, day))


def test_each_kpi_equals_the_hand_computed_value(shop):
    store, seg, _customers = shop
    history_rebuild(store=store, since=dt.date(2025, 3, 1), until=dt.date(2025, 3, 11))

    buyers = snap(seg["buyers"], 11)
    # A: 3,000 + (5,000 − 1,000) = 7,000 over 2 orders (AOV 3,500, 10 days apart); B: 2,000 over 1.
    # The cancelled order, the guest order and D's test order count nowhere.
    assert (buyers.members, buyers.buyers, buyers.joined, buyers.left) == (2, 2, 0, 0)
    assert buyers.repeat_rate == Decimal("0.5000")
    assert buyers.ltv == Decimal("4500.00")  # 9,000 / 2 members
    assert buyers.aov_customer == Decimal("2750.00")  # (3,500 + 2,000) / 2: ECPower's definition
    assert buyers.aov_order == Decimal("3000.00")  # 9,000 / 3 orders
    assert buyers.avg_orders == Decimal("1.50")
    assert buyers.purchase_interval_days == Decimal("10.0")
    assert (buyers.orders, buyers.revenue) == (1, Decimal("4000.00"))  # A's order of the 11th, net of refund

    everyone = snap(seg["everyone"], 11)
    assert (everyone.members, everyone.buyers) == (4, 2)
    assert everyone.repeat_rate == Decimal("0.2500")
    assert everyone.ltv == Decimal("2250.00")  # members without orders count as 0
    assert (everyone.aov_customer, everyone.aov_order) == (Decimal("2750.00"), Decimal("3000.00"))
    assert everyone.avg_orders == Decimal("0.75")

    # Before B's second (cancelled) order nothing changes; on the 5th B joins "buyers".
    assert (snap(seg["buyers"], 1).joined, snap(seg["buyers"], 1).members) == (1, 1)
    assert (snap(seg["buyers"], 5).joined, snap(seg["buyers"], 6).joined) == (1, 0)
    assert snap(seg["buyers"], 1).purchase_interval_days is None
    assert snap(seg["buyers"], 1).aov_customer == Decimal("3000.00")

    # "last order within 3 days": B (5th) is in on the 5th–8th and leaves on the 9th.
    assert [snap(seg["recent"], day).members for day in (5, 8, 9)] == [1, 1, 0]
    assert (snap(seg["recent"], 9).left, snap(seg["recent"], 11).joined) == (1, 1)


def test_a_segment_without_members_records_zeros_not_errors(shop):
    store, _seg, _customers = shop
    empty = segment_create(store=store, name="big", query="amount_spent > 1000000")
    history_rebuild(store=store, segments=[empty], since=dt.date(2025, 3, 10), until=dt.date(2025, 3, 11))
    row = snap(empty, 11)
    assert (row.members, row.ltv, row.repeat_rate, row.aov_customer, row.aov_order) == (
        0, Decimal(0), Decimal(0), None, None)


def test_update_continues_day_by_day_from_the_kept_members_and_is_idempotent(shop):
    store, seg, _customers = shop
    history_rebuild(store=store, since=dt.date(2025, 3, 1), until=dt.date(2025, 3, 4))
    assert SnapshotCursor.objects.get(segment=seg["buyers"]).date == dt.date(2025, 3, 4)
    assert SnapshotMember.objects.filter(segment=seg["buyers"]).count() == 1

    result = snapshots_update(store=store, until=dt.date(2025, 3, 11))  # seven days missed: caught up
    assert result.days == 7 and result.first == dt.date(2025, 3, 5)
    assert snap(seg["buyers"], 5).joined == 1 and snap(seg["recent"], 9).left == 1
    assert snap(seg["buyers"], 11).source == "daily"
    before = list(SegmentSnapshot.objects.values_list("segment_id", "date", "members", "joined", "ltv"))

    again = snapshots_update(store=store, until=dt.date(2025, 3, 11))
    assert again.days == 0
    assert list(SegmentSnapshot.objects.values_list("segment_id", "date", "members", "joined", "ltv")) == before


def test_long_backfills_are_daily_for_90_days_and_weekly_before():
    days = snapshot_days(dt.date(2024, 1, 1), dt.date(2025, 3, 31))
    assert days[-1] == dt.date(2025, 3, 31)
    assert days[-90] == dt.date(2025, 1, 1) and days[-91] == dt.date(2024, 12, 31)
    assert days[-92] == dt.date(2024, 12, 24)
    assert days[0] >= dt.date(2024, 1, 1) and (days[1] - days[0]).days == 7


def test_a_weekly_point_counts_the_whole_week(shop):
    store, seg, _customers = shop
    history_rebuild(store=store, since=dt.date(2025, 3, 1), until=dt.date(2025, 3, 11))
    SegmentSnapshot.objects.all().delete()
    # One weekly step, as the older part of a long backfill records.
    _walk(store, [seg["buyers"]], [dt.date(2025, 3, 11)], seed=dt.date(2025, 3, 4), source=SnapshotSource.BACKFILL,
          result=SnapshotResult(), progress=None)
    week = snap(seg["buyers"], 11)
    assert week.period_days == 7
    assert (week.joined, week.orders, week.revenue) == (1, 2, Decimal("6000.00"))  # B joined; B 5th + A 11th


def test_deleting_a_stores_data_drops_its_metric_history_too(shop):
    from ecpower.commerce.services import store_data_delete

    store, seg, _customers = shop
    history_rebuild(store=store, since=dt.date(2025, 3, 1), until=dt.date(2025, 3, 11))
    store_data_delete(store=store)
    assert not SegmentSnapshot.objects.filter(store=store).exists()
    assert not SnapshotMember.objects.filter(store=store).exists()
    assert not SnapshotCursor.objects.filter(store=store).exists()
    snapshots_update(store=store, until=dt.date(2025, 3, 11))  # no customers left: one empty day, no history
    assert set(SegmentSnapshot.objects.filter(store=store).values_list("date", "members")) == {
        (dt.date(2025, 3, 11), 0)}


def test_one_writer_per_store_at_a_time_and_a_dead_holder_is_taken_over(shop):
    from django.utils import timezone

    from metrics.models import SnapshotLock
    from metrics.snapshots import SnapshotsBusy, store_lock

    store, _seg, _customers = shop
    SnapshotLock.objects.create(store=store, holder="other-worker:1", heartbeat_at=timezone.now())
    with pytest.raises(SnapshotsBusy):
        with store_lock(store, wait=dt.timedelta(seconds=0.2), poll_seconds=0.05):
            pass  # pragma: no cover (never entered)
    with pytest.raises(SnapshotsBusy):  # the engine's entry points wait for it too
        with store_lock(store, wait=dt.timedelta(seconds=0.1), poll_seconds=0.05):
            history_rebuild(store=store, since=dt.date(2025, 3, 1), until=dt.date(2025, 3, 2))  # pragma: no cover
    SnapshotLock.objects.update(heartbeat_at=timezone.now() - dt.timedelta(hours=1))  # its worker died
    with store_lock(store, wait=dt.timedelta(seconds=1)):
        assert SnapshotLock.objects.get(store=store).holder != "other-worker:1"
        history_rebuild(store=store, since=dt.date(2025, 3, 1), until=dt.date(2025, 3, 2))  # re-entrant
    assert not SnapshotLock.objects.filter(store=store).exists()
    assert SegmentSnapshot.objects.filter(store=store, date=dt.date(2025, 3, 2)).count() == 3
