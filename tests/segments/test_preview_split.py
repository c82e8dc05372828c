"""The builder's exact count on a large store, split over two connections by ranges of customer ids."""

from __future__ import annotations

import datetime as dt
import re
import threading

import pytest
from django.db import connection

from ecpower.commerce.services import customer_facts_refresh
from segments.query_language import parse
from segments.selectors import segment_preview, store_today
from tests.factories import CustomerFactory, LineItemFactory, OrderFactory, ProductFactory, StoreFactory
from tests.segments.test_preview_superseded import builder_pages, the_second_supersedes_the_first

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="counts are split on PostgreSQL only"),
    pytest.mark.django_db(transaction=True),  # the other connection sees only committed rows
]
# The 20 customers without orders (shown first) and the 20 with one tea order (latest first).
RULE = "products_purchased NOT MATCHES (id = 101, count >= 2)"


@pytest.fixture
def large(settings):
    """60 customers ("large" means a range of more than 10 ids here): every third without orders, every
    other with one tea order, the rest with two on different days."""
    settings.PREVIEW_ESTIMATE_ABOVE = 10
    settings.SEGMENT_RECOMPUTE_THREADS = 2
    store = StoreFactory(shopify_domain="large.myshopify.com")
    tea = ProductFactory(store=store, shopify_id=101)
    day = store_today(store)
    for n in range(60):
        customer = CustomerFactory(store=store)
        for k in range(0 if n % 3 == 0 else 1 if n % 3 == 1 else 2):
            created = dt.datetime.combine(day - dt.timedelta(days=n + k), dt.time(12), tzinfo=store.zone)
            LineItemFactory(order=OrderFactory(store=store, customer=customer, created_at=created), product=tea)
    customer_facts_refresh(store=store)
    return store


def test_an_exact_count_is_split_in_two_ranges_of_customers_and_equals_the_count_on_one_connection(
        large, settings):
    statements: list[tuple[int, str]] = []

    def recorded(execute, sql, params, many, context):
        statements.append((threading.get_ident(), sql))
        return execute(sql, params, many, context)

    tree = parse(RULE)
    with connection.execute_wrapper(recorded):
        split = segment_preview(store=large, tree=tree, sample_size=100)
    counted = [(thread, sql) for thread, sql in statements if "OVER ()" in sql]
    assert len({thread for thread, _sql in counted}) == 2, "one count on each of two connections"
    assert all(re.search(r'"commerce_customer"\."id" >= %s AND "commerce_customer"\."id" < %s', sql)
               for _thread, sql in counted)

    settings.SEGMENT_RECOMPUTE_THREADS = 1
    whole = segment_preview(store=large, tree=tree, sample_size=100)
    assert split.count == whole.count == 40
    # The same members in the same order: customers without orders first, then the latest buyers.
    assert [c.pk for c in split.sample] == [c.pk for c in whole.sample]
    assert split.sample[0].last_order_at is None and split.sample[-1].last_order_at is not None

    settings.PREVIEW_ESTIMATE_ABOVE = 1_000  # a small store is counted on one connection
    statements.clear()
    with connection.execute_wrapper(recorded):
        assert segment_preview(store=large, tree=tree, sample_size=10).count == 40
    assert {thread for thread, sql in statements if "OVER ()" in sql} == {threading.get_ident()}


def test_a_newer_preview_from_the_same_page_cancels_both_halves_of_a_split_count(large, django_user_model):
    user = django_user_model.objects.create_superuser("hanako", "h@example.jp", "pw")
    ask, answers = builder_pages(user, store=large.pk, query=RULE)

    # The orders are locked, so both halves of the first count wait until the second request arrives.
    second = the_second_supersedes_the_first(ask, answers, f"{user.pk}-tab1", locked="commerce_order")
    assert (second.status_code, second.json()["count"]) == (200, 40)
