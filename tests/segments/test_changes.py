"""Who may have changed since a baseline (segments.changes.capture): the customers a daily run evaluates."""

from __future__ import annotations

import datetime as dt

from django.db import connection, transaction
from django.utils import timezone

from ecpower.commerce.models import Customer
from ecpower.commerce.services import customer_facts_refresh
from segments import changes
from segments.models import ChangeBaseline
from segments.selectors import store_today
from segments.services import segment_create
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

TABLE = "ecp_test_digests"


def captured(store, purpose="recompute") -> dict[int, str | None]:
    changes.capture(store, purpose, TABLE)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT customer_id, digest FROM {TABLE}")
        return dict(cursor.fetchall())


def keep(store, purpose="recompute") -> None:
    taken = changes.capture(store, purpose, TABLE)
    with transaction.atomic(), connection.cursor() as cursor:
        changes.baseline_keep(cursor, store, taken)


def test_capture_finds_new_changed_and_deleted_customers_of_its_store_only(db):
    store, other = StoreFactory(), StoreFactory()
    kept, edited, refreshed, gone = (CustomerFactory(store=store, province_code="JP-27") for _ in range(4))
    elsewhere = CustomerFactory(store=other)
    keep(store)
    keep(other)
    assert captured(store) == {}  # nothing changed since the baseline

    Customer.objects.filter(pk=edited.pk).update(province_code="JP-13")  # a column rules read
    Customer.objects.filter(pk=refreshed.pk).update(facts_refreshed_at=timezone.now())  # an ingest touched it
    Customer.objects.filter(pk=kept.pk).update(note="called on Tuesday")  # no rule reads notes
    new = CustomerFactory(store=store)
    gone_id = gone.pk
    with connection.cursor() as cursor:  # deleted by set-based SQL: its digest stays behind (no cascade)
        cursor.execute(f"DELETE FROM {Customer._meta.db_table} WHERE id = %s", [gone_id])
    Customer.objects.filter(pk=elsewhere.pk).update(province_code="JP-01")

    found = captured(store)
    assert set(found) == {edited.pk, refreshed.pk, new.pk, gone_id}
    assert found[gone_id] is None and all(found[pk] for pk in (edited.pk, refreshed.pk, new.pk))
    # The share of the store that changed decides how a daily run evaluates: the deleted customer is a
    # change, not one of the store's customers, and the other store's customers count for neither.
    taken = changes.capture(store, "recompute", TABLE)
    assert (taken.changed, taken.customers, taken.changed_share) == (4, 4, 1.0)
    keep(store)
    taken = changes.capture(store, "recompute", TABLE)
    assert (taken.changed, taken.customers, taken.changed_share) == (0, 4, 0.0)
    # Another purpose keeps its own baseline: without one, every customer of the store is new to it.
    assert set(captured(store, purpose="snapshots")) == {kept.pk, edited.pk, refreshed.pk, new.pk}
    assert set(captured(other)) == {elsewhere.pk}


def test_a_change_and_its_undoing_compare_equal_to_the_baseline(db):
    store = StoreFactory()
    customer = CustomerFactory(store=store, city="Kyoto", first_order_at=None)
    keep(store)
    Customer.objects.filter(pk=customer.pk).update(city="Osaka", first_order_at=timezone.now() - dt.timedelta(days=3))
    assert set(captured(store)) == {customer.pk}
    Customer.objects.filter(pk=customer.pk).update(city="Kyoto", first_order_at=None)
    assert captured(store) == {}


def scoped(table: str, bucket: int) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(changes.bucket_scope(table, bucket))
        return sorted(row[0] for row in cursor.fetchall())


def test_each_segment_evaluates_the_changed_customers_and_those_its_relative_dates_sweep(db):
    store = StoreFactory()
    today = store_today(store)
    noon = dt.time(12)
    changed, on_the_edge, both, idle = (CustomerFactory(store=store) for _ in range(4))
    for customer in (on_the_edge, both):  # an order on the day "last order before 90 days ago" sweeps tomorrow
        OrderFactory(store=store, customer=customer,
                     created_at=dt.datetime.combine(today - dt.timedelta(days=90), noon, tzinfo=store.zone))
    OrderFactory(store=store, customer=idle, created_at=dt.datetime.combine(today - dt.timedelta(days=30), noon,
                                                                            tzinfo=store.zone))
    customer_facts_refresh(store=store)
    keep(store)
    Customer.objects.filter(pk__in=[changed.pk, both.pk]).update(city="Nara")
    taken = changes.capture(store, "recompute", TABLE)
    baseline = ChangeBaseline.objects.get(store=store, purpose="recompute")
    spending = segment_create(store=store, name="Spenders", slug="spenders", query="amount_spent >= 1000")
    dormant = segment_create(store=store, name="Dormant", slug="dormant", query="last_order_date < -90d")
    with connection.cursor() as cursor:
        buckets = changes.dirty_fill(cursor, store, "ecp_test_dirty", [spending, dormant], set(),
                                     lambda _segment: (today, today + dt.timedelta(days=1)),
                                     changes.changed_since_sql(store, taken, baseline))
        assert changes.dirty_share(cursor, "ecp_test_dirty", buckets, 4) == (2 / 4 + 3 / 4) / 2

    assert buckets[spending.pk] == changes.CHANGED_BUCKET
    assert scoped("ecp_test_dirty", buckets[spending.pk]) == sorted([changed.pk, both.pk])
    # The changed customers once, and the customer the sweep adds: nobody twice, the idle one not at all.
    assert scoped("ecp_test_dirty", buckets[dormant.pk]) == sorted([changed.pk, both.pk, on_the_edge.pk])
