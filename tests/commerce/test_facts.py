"""Customer facts and order ordinals, checked against a plain per-customer computation."""

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from ecpower.commerce.models import Customer, LineItem, Order
from ecpower.commerce.services import customer_facts_refresh
from tests.factories import CustomerFactory, LineItemFactory, OrderFactory, StoreFactory

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

order_strategy = st.fixed_dictionaries(
    {
        "customer": st.integers(min_value=0, max_value=5),  # 5 = guest order
        "day": st.integers(min_value=0, max_value=20),  # few days, so creation times tie often
        "total": st.decimals(min_value=0, max_value=50000, places=2),
        "refund_share": st.sampled_from([0, 0, 0, Decimal("0.3"), 1]),
        "cancelled": st.booleans(),
        "test": st.integers(0, 9).map(lambda n: n == 0),
        "code": st.sampled_from(["", "WELCOME10", "LINE500"]),
        "utm": st.sampled_from(["", "insta_spring", "line_friend"]),
    }
)


def expected_facts(orders: list[Order]) -> dict[int, dict]:
    """The rule of docs/data-model.md, one customer at a time, in plain Python."""
    facts: dict[int, dict] = {}
    by_customer: dict[int, list[Order]] = {}
    for order in orders:
        if order.customer_id and order.cancelled_at is None and not order.test:
            by_customer.setdefault(order.customer_id, []).append(order)
    for customer_id, counted in by_customer.items():
        counted.sort(key=lambda o: (o.created_at, o.pk))
        spent = sum((o.total - o.refunded_amount for o in counted), Decimal(0))
        facts[customer_id] = {
            "ordinals": {o.pk: k for k, o in enumerate(counted, 1)},
            "orders_count": len(counted),
            "amount_spent": spent,
            "average_order_value": (spent / len(counted)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP),
            "first_order_at": counted[0].created_at,
            "last_order_at": counted[-1].created_at,
            "first_order_discount_code": counted[0].discount_code,
            "first_order_utm_campaign": counted[0].utm_campaign,
        }
    return facts


class FactsMatchPlainComputation(TestCase):
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(orders=st.lists(order_strategy, max_size=25), subset=st.booleans())
    def test_facts_and_ordinals_match_a_per_customer_computation(self, orders, subset):
        store = StoreFactory()
        other_store = StoreFactory()
        customers = [CustomerFactory(store=store) for _ in range(5)]
        bystander = CustomerFactory(store=other_store, orders_count=7)
        created = []
        for n, spec in enumerate(orders):
            customer = customers[spec["customer"]] if spec["customer"] < 5 else None
            created.append(
                OrderFactory(
                    store=store,
                    customer=customer,
                    name=f"#{n}",
                    created_at=T0 + dt.timedelta(days=spec["day"]),
                    total=spec["total"],
                    refunded_amount=(spec["total"] * spec["refund_share"]).quantize(Decimal("0.01")),
                    cancelled_at=T0 if spec["cancelled"] else None,
                    test=spec["test"],
                    discount_code=spec["code"],
                    utm_campaign=spec["utm"],
                    ordinal=99,  # stale values must be overwritten or cleared
                )
            )
            LineItemFactory(order=created[-1], ordinal=99)
        if subset:
            # Refreshing some customers together and the others one by one converges to the same result as a
            # whole-store refresh.
            customer_facts_refresh(store=store, customer_ids=[customer.pk for customer in customers[:3]])
            for customer in customers[3:]:
                customer_facts_refresh(store=store, customer_ids=[customer.pk])
            Order.objects.filter(customer__isnull=True).update(ordinal=None)
            LineItem.objects.filter(order__customer__isnull=True).update(ordinal=None)
        else:
            customer_facts_refresh(store=store)

        expected = expected_facts(created)
        ordinals = dict(Order.objects.filter(store=store).values_list("pk", "ordinal"))
        for order in created:
            want = expected.get(order.customer_id, {}).get("ordinals", {}).get(order.pk)
            assert ordinals[order.pk] == want, (order.name, ordinals[order.pk], want)
        # Each line carries its order's customer, time and ordinal (what products_purchased reads).
        for line in LineItem.objects.filter(store=store).select_related("order"):
            assert line.ordinal == line.order.ordinal, line.order.name
            if line.ordinal is not None:
                assert (line.customer_id, line.ordered_at) == (line.order.customer_id, line.order.created_at)
        for customer in Customer.objects.filter(store=store):
            want = expected.get(customer.pk)
            if want is None:
                assert (customer.orders_count, customer.amount_spent, customer.first_order_at) == (0, 0, None)
                assert customer.average_order_value is None
                continue
            assert customer.orders_count == want["orders_count"]
            assert customer.amount_spent == want["amount_spent"]
            # SQLite divides in floating point; a tie at the third decimal may round either way.
            assert abs(customer.average_order_value - want["average_order_value"]) <= Decimal("0.01")
            assert customer.first_order_at == want["first_order_at"]
            assert customer.last_order_at == want["last_order_at"]
            assert customer.first_order_discount_code == want["first_order_discount_code"]
            assert customer.first_order_utm_campaign == want["first_order_utm_campaign"]
        bystander.refresh_from_db()
        assert bystander.orders_count == 7  # another store is never touched


def test_a_customer_whose_only_order_is_cancelled_is_reset(db):
    order = OrderFactory(total=Decimal("3000"))
    customer_facts_refresh(store=order.store)
    order.customer.refresh_from_db()
    assert order.customer.orders_count == 1
    Order.objects.filter(pk=order.pk).update(cancelled_at=T0)
    stamped = Customer.objects.get(pk=order.customer_id).facts_refreshed_at
    customer_facts_refresh(store=order.store, customer_ids=[order.customer_id])
    order.customer.refresh_from_db()
    order.refresh_from_db()
    assert (order.customer.orders_count, order.customer.amount_spent, order.ordinal) == (0, 0, None)
    assert order.customer.facts_refreshed_at is not None and order.customer.facts_refreshed_at != stamped


def test_refresh_of_a_subset_runs_a_fixed_number_of_statements(db, django_assert_num_queries):
    from django.db import connection

    store = StoreFactory()
    customers = [CustomerFactory(store=store) for _ in range(30)]
    for customer in customers:
        OrderFactory.create_batch(3, customer=customer, store=store)
    without_orders = CustomerFactory(store=store)
    # savepoint + 6 statements (rank and clear ordinals, aggregate and stamp, reset and stamp those without
    # counted orders, copy to the lines of orders whose ordinal changed (one per 2,000 orders), copy to lines
    # without copies, the products of orders that have none yet) + release. On PostgreSQL the ranking and the
    # aggregates are one statement (services._ranks_and_facts).
    with django_assert_num_queries(7 if connection.vendor == "postgresql" else 8):
        customer_facts_refresh(store=store, customer_ids=[c.pk for c in [*customers, without_orders]])
    assert set(Customer.objects.filter(store=store).values_list("orders_count", flat=True)) == {3, 0}
    # Every customer refreshed is stamped: tomorrow's snapshots look at them again (metrics.snapshots).
    assert not Customer.objects.filter(store=store, facts_refreshed_at__isnull=True).exists()


@pytest.mark.django_db(transaction=True)
def test_a_whole_store_build_that_rewrote_many_rows_leaves_them_vacuumed_and_the_cover_rebuilt(monkeypatch):
    """After a first import's facts build every order, customer and line row has a dead old version; the
    build vacuums the three tables once it commits, so scans read no dead rows and the covering line index
    is read alone (PostgreSQL only: SQLite has no row versions)."""
    from django.db import connection

    from ecpower.commerce import services

    if connection.vendor != "postgresql":
        pytest.skip("row versions and visibility are PostgreSQL's")
    monkeypatch.setattr(services, "ANALYZE_AFTER", 10)
    store = _store_of_20_customers_with_2_orders()
    cover_before = _cover_file()
    assert len(cover_before) == 2
    customer_facts_refresh(store=store)  # outside any transaction: its on-commit vacuum runs here
    tables = [model._meta.db_table for model in (Order, Customer, LineItem)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT relname, relpages, relallvisible FROM pg_class WHERE relname = ANY(%s)", [tables])
        pages = {name: (total, visible) for name, total, visible in cursor.fetchall()}
    cover_after = _cover_file()
    assert all(total > 0 and visible == total for total, visible in pages.values()), pages
    # The store is all of the tables: the covering indexes, which kept every line's and order's old entry,
    # were rebuilt.
    assert all(after != before for after, before in zip(cover_after, cover_before, strict=True))
    assert Customer.objects.filter(store=store, orders_count=2).count() == 20


@pytest.mark.django_db(transaction=True)
def test_a_store_that_is_a_small_share_of_the_tables_leaves_the_cover_alone(monkeypatch):
    """Rebuilding an index costs the whole table: a store whose rows are a small share of it (here: the
    rule's share set above what any store can reach) only vacuums."""
    from django.db import connection

    from ecpower.commerce import services

    if connection.vendor != "postgresql":
        pytest.skip("indexes are rebuilt on PostgreSQL only")
    monkeypatch.setattr(services, "ANALYZE_AFTER", 10)
    monkeypatch.setattr(services, "REBUILD_SHARE", 1.5)
    store = _store_of_20_customers_with_2_orders()
    before = _cover_file()
    customer_facts_refresh(store=store)
    assert _cover_file() == before


def _store_of_20_customers_with_2_orders():
    store = StoreFactory()
    for customer in CustomerFactory.create_batch(20, store=store):
        for order in OrderFactory.create_batch(2, customer=customer, store=store):
            LineItemFactory(order=order, store=store)
    return store


def _cover_file() -> list[int]:
    """The covering line and order indexes' files: a rebuild gives each a new one."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT relfilenode FROM pg_class WHERE relname IN ('line_item_customer_cover',"
                       " 'order_customer_cover') ORDER BY relname")
        return [row[0] for row in cursor.fetchall()]


def test_new_orders_are_numbered_provisionally_after_their_customers_last_order(db):
    """The ingest's hint (orders_number_provisionally): a new counted order after the customer's known orders
    gets the next ordinal; one before them gets none, nor do the customer's later ones (every rank moves);
    cancelled, test and guest orders get none."""
    from ecpower.commerce.services import orders_number_provisionally

    known = OrderFactory(created_at=T0)
    OrderFactory(store=known.store, customer=known.customer, created_at=T0 + dt.timedelta(days=1))
    early = OrderFactory(store=known.store, created_at=T0 + dt.timedelta(days=5))
    customer_facts_refresh(store=known.store)
    store, regular, late_comer = known.store, known.customer, early.customer

    def new(customer, days, **fields):
        return Order(store=store, customer=customer, created_at=T0 + dt.timedelta(days=days), **fields)

    orders = {
        "after, second": new(regular, 4), "after, first": new(regular, 3), "cancelled": new(regular, 2, cancelled_at=T0),
        "test": new(regular, 2, test=True), "guest": new(None, 2),
        "before the last": new(late_comer, 1), "after the one before": new(late_comer, 6),
        "first ever": new(CustomerFactory(store=store), 9),
    }
    orders_number_provisionally(list(orders.values()))

    assert {name: order.ordinal for name, order in orders.items()} == {
        "after, second": 4, "after, first": 3, "cancelled": None, "test": None, "guest": None,
        "before the last": None, "after the one before": None, "first ever": 1,
    }
