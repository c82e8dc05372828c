"""Deleting a store in the admin: a page that counts its rows, then a set-based delete of them all."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from ecpower.commerce.models import Customer, LineItem, Order, Store
from ecpower.commerce.services import customer_facts_refresh
from segments.models import Membership, Segment
from segments.services import segment_create, segment_recompute
from tests.factories import CustomerFactory, LineItemFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db


def store_with(customers: int) -> Store:
    store = StoreFactory()
    for _ in range(customers):
        order = OrderFactory(store=store, customer=CustomerFactory(store=store))
        LineItemFactory(store=store, order=order)
    customer_facts_refresh(store=store)
    segment_recompute(segment=segment_create(store=store, name="Buyers", slug="buyers", query="number_of_orders >= 1"))
    return store


def test_the_confirmation_counts_each_kind_of_row_of_the_store_in_a_fixed_number_of_queries(staff_client):
    small, large = store_with(2), store_with(12)
    pages, queries = [], []
    for store in (small, large):
        with CaptureQueriesContext(connection) as captured:
            response = staff_client.get(reverse("admin:commerce_store_delete", args=[store.pk]))
        assert response.status_code == 200
        pages.append(response.content.decode())
        queries.append(len(captured))
    assert queries[0] == queries[1]
    page = pages[1]
    for line in ("Customers: 12", "Orders: 12", "Line items: 12", "Memberships: 12", "Condition segments: 1"):
        assert line in page or line.replace("Condition segments", "Segments") in page, line
    assert "Customer: " not in page  # no customer listed one by one


def test_confirming_deletes_the_store_and_all_of_its_rows_and_nothing_of_another(staff_client):
    kept, gone = store_with(2), store_with(3)
    response = staff_client.post(reverse("admin:commerce_store_delete", args=[gone.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Store.objects.filter(pk=gone.pk).exists()
    for model in (Customer, Order, LineItem, Segment):
        assert not model.objects.filter(store_id=gone.pk).exists(), model
    assert not Membership.objects.filter(segment__store_id=gone.pk).exists()
    assert Customer.objects.filter(store=kept).count() == 2
    assert Membership.objects.filter(segment__store=kept).count() == 2


def test_confirming_does_not_count_the_rows_again(staff_client):
    store = store_with(2)
    with CaptureQueriesContext(connection) as captured:
        staff_client.post(reverse("admin:commerce_store_delete", args=[store.pk]), {"post": "yes"})
    assert not [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"]]
    assert not Store.objects.filter(pk=store.pk).exists()


def test_a_customers_delete_page_counts_their_rows_in_a_fixed_number_of_queries(staff_client):
    """A customer's join/leave events are titled by customer and segment; listed one by one, each would be
    looked up (two queries per event)."""
    queries = []
    for orders in (1, 6):
        store = StoreFactory()
        customer = CustomerFactory(store=store)
        for _ in range(orders):
            LineItemFactory(store=store, order=OrderFactory(store=store, customer=customer))
        customer_facts_refresh(store=store)
        for n in range(orders):  # a segment per order count, each with one join event
            segment_recompute(segment=segment_create(store=store, name=f"{n}+", slug=f"at-least-{n}",
                                                     query=f"number_of_orders >= {n + 1}"))
        with CaptureQueriesContext(connection) as captured:
            page = staff_client.get(reverse("admin:commerce_customer_delete", args=[customer.pk])).content.decode()
        queries.append(len(captured))
        assert f"Memberships: {orders}" in page and f"Membership events: {orders}" in page
    assert queries[0] == queries[1]
