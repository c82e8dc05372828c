"""Who may have changed since a baseline (segments.changes.capture): the customers a daily run evaluates."""

from __future__ import annotations

import datetime as dt

from django.db import connection, transaction
from django.utils import timezone

from ecpower.commerce.models import Customer
from segments import changes
from tests.factories import CustomerFactory, StoreFactory

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
