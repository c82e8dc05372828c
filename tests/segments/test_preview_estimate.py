"""The builder's live count on a large store: an estimate from a sample of customers, then the exact count."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from django.urls import reverse

from ecpower.commerce.services import customer_facts_refresh
from segments.query_language import parse
from segments.selectors import segment_preview, store_today
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

OVER_ORDERS = "orders_placed MATCHES (date > -1y, count >= 2)"


@pytest.fixture
def big(db, settings):
    """60 customers, every third with two orders this month; "large" means over 10 customers here.

    The other store's customers are created after these, so this store's ids are one range.
    """
    settings.PREVIEW_ESTIMATE_ABOVE = 10
    settings.PREVIEW_ESTIMATE_SAMPLE = 15  # one customer in four
    store = StoreFactory(shopify_domain="big.myshopify.com")
    noon = dt.datetime.combine(store_today(store) - dt.timedelta(days=3), dt.time(12), tzinfo=store.zone)
    customers = [CustomerFactory(store=store) for _ in range(60)]
    for n, customer in enumerate(customers):
        if n % 3 == 0:
            OrderFactory.create_batch(2, store=store, customer=customer, created_at=noon)
    other = StoreFactory(shopify_domain="other.myshopify.com")  # never sampled nor counted
    for _ in range(30):
        OrderFactory.create_batch(2, store=other, customer=CustomerFactory(store=other), created_at=noon)
    customer_facts_refresh(store=store)
    customer_facts_refresh(store=other)
    return store, customers


def test_a_rule_over_orders_is_estimated_from_a_sample_of_the_stores_customers(big, settings):
    store, customers = big
    tree = parse(OVER_ORDERS)
    exact = segment_preview(store=store, tree=tree)
    assert (exact.count, exact.estimated) == (20, False)
    members = {c.pk for n, c in enumerate(customers) if n % 3 == 0}

    estimate = segment_preview(store=store, tree=tree, estimate=True)
    assert (estimate.estimated, estimate.sampled) == (True, 15)
    assert estimate.count % 4 == 0  # members in a sample of one customer in four, times four
    # The 95 % margin of a share p seen in 15 of 60 customers (finite-population correction). Whether
    # the exact count falls inside depends on the draw; the benchmark checks that at scale.
    share = estimate.count / 60
    assert estimate.margin == round(1.96 * 60 * math.sqrt(max(share * (1 - share), 1 / 15) / 15 * (1 - 15 / 60)))
    assert estimate.sample and {c.pk for c in estimate.sample} <= members
    assert segment_preview(store=store, tree=tree, estimate=True).count == estimate.count  # same draw all day

    settings.PREVIEW_ESTIMATE_SAMPLE = 60  # everyone: the estimate is the count, with no margin
    everyone = segment_preview(store=store, tree=tree, estimate=True)
    assert (everyone.estimated, everyone.sampled, everyone.count, everyone.margin) == (True, 60, 20, 0)


def test_cheap_rules_and_small_stores_are_always_counted_exactly(big, settings):
    store, _customers = big
    facts = segment_preview(store=store, tree=parse("number_of_orders >= 2"), estimate=True)
    assert (facts.count, facts.estimated) == (20, False)
    settings.PREVIEW_ESTIMATE_ABOVE = 60  # the store has 60: not above
    small = segment_preview(store=store, tree=parse(OVER_ORDERS), estimate=True)
    assert (small.count, small.estimated) == (20, False)


def test_the_builder_gets_the_estimate_first_and_the_exact_count_when_it_asks(big, staff_client):
    store, _customers = big
    url = reverse("admin:segments_conditionsegment_preview")
    first = staff_client.post(url, {"store": store.pk, "query": OVER_ORDERS}).json()
    assert (first["ok"], first["estimated"], first["sampled"]) == (True, True, 15)
    assert first["margin"] > 0
    exact = staff_client.post(url, {"store": store.pk, "query": OVER_ORDERS, "exact": "1"}).json()
    assert (exact["ok"], exact["estimated"], exact["count"]) == (True, False, 20)
