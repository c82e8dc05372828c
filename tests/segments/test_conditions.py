"""Every condition of the query language on a small hand-made store, with the expected members."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from ecpower.commerce.models import CustomerTag, LineItem, Order, ProductTag
from ecpower.commerce.services import customer_facts_refresh
from segments import rules
from segments.models import Membership
from segments.query_language import parse
from segments.selectors import evaluation_context, rule_members, store_today
from segments.services import (
    line_summary_table,
    segment_create,
    segment_recompute,
    store_segments_recompute,
)
from tests.factories import CustomerFactory, ProductFactory, StoreFactory


@pytest.fixture
def shop(db):
    """Four customers of a Tokyo store (dates relative to the store's today) and a bystander store.

    * aki:   3 orders (120, 30 and 0 days ago), tea then cups; WELCOME10 first; VIP, LINE連携; Tokyo
    * ben:   1 order 200 days ago (pos, insta_spring), a blue cup ×2; Osaka; SMS subscriber
    * chika: no orders; added 10 days ago; US
    * dai:   1 cancelled order yesterday and 1 test order (neither counts)
    """
    store = StoreFactory(time_zone="Asia/Tokyo")
    zone = store.zone
    today = store_today(store)

    def at(days_ago: int, hour: int = 12) -> dt.datetime:
        return dt.datetime.combine(today - dt.timedelta(days=days_ago), dt.time(hour), tzinfo=zone)

    aki = CustomerFactory(store=store, email="aki@example.jp", province_code="JP-13", city="渋谷区",
                          email_marketing="SUBSCRIBED", shopify_created_at=at(400))
    ben = CustomerFactory(store=store, email="ben@example.jp", province_code="JP-27", city="大阪市",
                          sms_marketing="SUBSCRIBED", shopify_created_at=at(250))
    chika = CustomerFactory(store=store, email="chika@example.jp", country_code="US", province_code="",
                            shopify_created_at=at(10))
    dai = CustomerFactory(store=store, email="dai@example.jp", shopify_created_at=None)
    CustomerTag.objects.create(store=store, customer=aki, name="VIP")
    CustomerTag.objects.create(store=store, customer=aki, name="LINE連携")
    tea = ProductFactory(store=store, shopify_id=1001, product_type="緑茶", vendor="静岡茶園")
    cup = ProductFactory(store=store, shopify_id=1002, product_type="器", vendor="有田窯")
    ProductTag.objects.create(store=store, product=tea, name="tea")
    ProductTag.objects.create(store=store, product=cup, name="color:blue")

    def order(customer, name, days_ago, total, lines, **extra):
        o = Order.objects.create(store=store, customer=customer, name=name, created_at=at(days_ago, extra.pop("hour", 12)),
                                 total=Decimal(total), **extra)
        for position, (product, sku, quantity) in enumerate(lines, 1):
            LineItem.objects.create(store=store, order=o, product=product, sku=sku, title=sku, quantity=quantity,
                                    position=position)
        return o

    order(aki, "#1", 120, 3000, [(tea, "TEA-1", 1)], discount_code="WELCOME10", source_name="web")
    order(aki, "#2", 30, 5000, [(tea, "TEA-1", 2), (cup, "CUP-1", 1)], source_name="web", utm_campaign="line_friend")
    order(aki, "#3", 0, 1000, [(cup, "CUP-1", 1)], source_name="web", hour=0)
    order(ben, "#4", 200, 2400, [(cup, "CUP-1", 2)], source_name="pos", utm_campaign="insta_spring")
    order(dai, "#5", 1, 9000, [(tea, "TEA-1", 1)], cancelled_at=at(1))
    order(dai, "#6", 1, 9000, [(tea, "TEA-1", 1)], test=True)
    customer_facts_refresh(store=store)

    other = StoreFactory()
    stranger = CustomerFactory(store=other, email="aki@example.jp", orders_count=9, email_marketing="SUBSCRIBED")
    CustomerTag.objects.create(store=other, customer=stranger, name="VIP")
    return store, {"aki": aki, "ben": ben, "chika": chika, "dai": dai}


CASES = [
    # Order counts and money (counted orders only: dai's cancelled and test orders do not count).
    ("number_of_orders = 0", {"chika", "dai"}),
    ("number_of_orders >= 1", {"aki", "ben"}),
    ("number_of_orders > 1", {"aki"}),
    ("number_of_orders != 1", {"aki", "chika", "dai"}),
    ("number_of_orders < 3", {"ben", "chika", "dai"}),
    ("number_of_orders <= 1", {"ben", "chika", "dai"}),
    ("number_of_orders BETWEEN 1 AND 3", {"aki", "ben"}),
    ("amount_spent >= 9000", {"aki"}),
    ("amount_spent = 2400", {"ben"}),
    ("amount_spent BETWEEN 1 AND 5000", {"ben"}),
    ("average_order_value = 3000", {"aki"}),
    ("average_order_value < 2500", {"ben"}),
    ("average_order_value IS NULL", {"chika", "dai"}),
    # Dates: calendar days in the store's zone; relative days count back from today.
    ("last_order_date = today", {"aki"}),
    ("last_order_date > -30d", {"aki"}),
    ("last_order_date < -90d", {"ben"}),
    ("last_order_date BETWEEN -250d AND -150d", {"ben"}),
    ("last_order_date IS NULL", {"chika", "dai"}),
    ("first_order_date >= -150d", {"aki"}),
    ("first_order_date <= -120d", {"aki", "ben"}),
    ("first_order_date < -120d", {"ben"}),
    ("first_order_date IS NOT NULL", {"aki", "ben"}),
    ("first_order_date > -1y", {"aki", "ben"}),
    ("first_order_date > -2w", set()),
    ("first_order_date < -3m", {"aki", "ben"}),
    ("customer_added_date >= -2w", {"chika"}),
    ("customer_added_date < yesterday", {"aki", "ben", "chika"}),
    ("customer_added_date IS NULL", {"dai"}),
    # Tags and places (tags case-insensitively, like Shopify).
    ("customer_tags CONTAINS 'vip'", {"aki"}),
    ("customer_tags CONTAINS 'LINE連携'", {"aki"}),
    ("customer_tags NOT CONTAINS 'VIP'", {"ben", "chika", "dai"}),
    ("customer_countries CONTAINS 'JP'", {"aki", "ben", "dai"}),
    ("customer_countries NOT CONTAINS 'JP'", {"chika"}),
    ("customer_regions CONTAINS 'JP-13'", {"aki", "dai"}),
    ("customer_cities CONTAINS '大阪市'", {"ben"}),
    # Consent.
    ("email_subscription_status = 'SUBSCRIBED'", {"aki"}),
    ("email_subscription_status != 'SUBSCRIBED'", {"ben", "chika", "dai"}),
    ("sms_subscription_status = 'SUBSCRIBED'", {"ben"}),
    # First order attributes.
    ("first_order_discount_code = 'welcome10'", {"aki"}),
    ("first_order_discount_code != 'WELCOME10'", set()),
    ("first_order_discount_code IS NULL", {"ben", "chika", "dai"}),
    ("first_order_source = 'pos'", {"ben"}),
    ("first_order_utm_campaign = 'insta_spring'", {"ben"}),
    ("first_order_utm_campaign IS NOT NULL", {"ben"}),
    # products_purchased.
    ("products_purchased MATCHES ()", {"aki", "ben"}),
    ("products_purchased MATCHES (id = 1001)", {"aki"}),
    ("products_purchased MATCHES (id IN (1001, 1002), date > -100d)", {"aki"}),
    ("products_purchased MATCHES (sku = 'cup-1')", {"aki", "ben"}),
    ("products_purchased MATCHES (product_type = '器', order_number = 1)", {"ben"}),
    ("products_purchased MATCHES (product_type = '器', order_number BETWEEN 2 AND 5)", {"aki"}),
    ("products_purchased MATCHES (vendor IN ('静岡茶園'))", {"aki"}),
    ("products_purchased MATCHES (tag = 'color:blue', count >= 2)", {"aki"}),
    ("products_purchased MATCHES (tag = 'color:blue', sum_quantity >= 2)", {"aki", "ben"}),
    ("products_purchased MATCHES (tag = 'tea', sum_quantity = 3)", {"aki"}),
    ("products_purchased MATCHES (tag = 'tea', count < 1)", {"ben", "chika", "dai"}),
    ("products_purchased NOT MATCHES (date > -3m)", {"ben", "chika", "dai"}),
    ("products_purchased MATCHES (date BETWEEN -12m AND today, count >= 3)", {"aki"}),
    # orders_placed.
    ("orders_placed MATCHES (date > -60d)", {"aki"}),
    ("orders_placed MATCHES (amount >= 3000)", {"aki"}),
    ("orders_placed MATCHES (count >= 2, date > -1y)", {"aki"}),
    ("orders_placed MATCHES (sum_amount BETWEEN 2000 AND 3000)", {"ben"}),
    ("orders_placed MATCHES (discount_code = 'WELCOME10')", {"aki"}),
    ("orders_placed MATCHES (source = 'pos')", {"ben"}),
    ("orders_placed MATCHES (utm_campaign IN ('line_friend', 'x'))", {"aki"}),
    ("orders_placed NOT MATCHES (date > -1y)", {"chika", "dai"}),
    # Logic: AND binds tighter than OR; NOT of a condition is exactly its complement.
    ("number_of_orders = 0 OR amount_spent > 5000 AND customer_tags CONTAINS 'VIP'", {"aki", "chika", "dai"}),
    ("(number_of_orders = 0 OR amount_spent > 5000) AND customer_countries CONTAINS 'JP'", {"aki", "dai"}),
    ("NOT last_order_date > -30d", {"ben", "chika", "dai"}),
    ("NOT (first_order_discount_code = 'WELCOME10' OR average_order_value < 2500)", {"chika", "dai"}),
]


@pytest.mark.parametrize(("query", "expected"), CASES, ids=[q for q, _e in CASES])
def test_condition_selects_the_expected_customers(shop, query, expected):
    store, people = shop
    names = {c.pk: name for name, c in people.items()}
    got = {names[pk] for pk in rule_members(store=store, tree=parse(query)).values_list("pk", flat=True)}
    assert got == expected


def test_every_condition_in_one_statement_selects_the_same_customers(shop):
    """An incremental update evaluates all rules at once (``verdict_rows``); its products_purchased
    conditions then share one grouped read of the line items, and must select what each does alone."""
    store, people = shop
    names = {c.pk: name for name, c in people.items()}
    trees = [rules.check(parse(query)) for query, _expected in CASES]
    context = evaluation_context(store=store, scope=[c.pk for c in people.values()])
    with CaptureQueriesContext(connection) as captured:
        rows = rules.verdict_rows(trees, context)
    assert sorted(names[row[0]] for row in rows) == sorted(names.values())
    for index, (query, expected) in enumerate(CASES):
        assert {names[row[0]] for row in rows if row[1 + index]} == expected, query
    statement = captured.captured_queries[-1]["sql"]
    assert statement.count(f'FROM "{LineItem._meta.db_table}"') == 1  # one read of the lines for 13 conditions


PRODUCT_CASES = [(query, expected) for query, expected in CASES if query.startswith("products_purchased")]


def _product_segments_recomputed(shop):
    return _product_segments_recomputed_leaving(shop, set())


def _product_segments_recomputed_leaving(shop, tables: set[str]):
    """Recompute PRODUCT_CASES as segments and check their members; afterwards exactly ``tables`` of
    the line summaries exist (a recompute drops its own, and those abandoned long ago)."""
    store, people = shop
    names = {c.pk: name for name, c in people.items()}
    segments = [segment_create(store=store, name=f"p{n}", slug=f"p{n}", query=q) for n, (q, _e) in enumerate(PRODUCT_CASES)]
    with CaptureQueriesContext(connection) as captured:
        outcome = store_segments_recompute(store=store)
    assert not outcome.failed
    for segment, (query, expected) in zip(segments, PRODUCT_CASES, strict=True):
        got = set(Membership.objects.filter(segment=segment).values_list("customer_id", flat=True))
        assert {names[pk] for pk in got} == expected, query
    if connection.vendor == "postgresql":  # the summary table is dropped, whatever happened
        with connection.cursor() as cursor:
            cursor.execute("SELECT relname FROM pg_class WHERE relname LIKE %s", [f"{rules.LineSummary.TABLE}%"])
            assert {name for (name,) in cursor.fetchall()} == tables
    return [q["sql"] for q in captured.captured_queries]


def test_a_store_recompute_reads_the_lines_once_for_all_its_product_segments(shop):
    statements = _product_segments_recomputed(shop)
    reading = [sql for sql in statements if f'FROM "{LineItem._meta.db_table}"' in sql]
    if connection.vendor == "postgresql":  # one pass writes the summary every segment reads
        assert len(reading) == 1 and reading[0].startswith(f"CREATE UNLOGGED TABLE {rules.LineSummary.TABLE}_")
    else:  # SQLite: each segment reads the lines itself
        assert len(reading) == len(PRODUCT_CASES)


@pytest.mark.django_db(transaction=True)
def test_a_store_recompute_side_by_side_shares_the_line_summary_between_connections(shop):
    _product_segments_recomputed(shop)


def test_a_line_summary_that_cannot_be_written_leaves_each_segment_to_read_the_lines(shop, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(rules, "line_summary_create", broken)
    statements = _product_segments_recomputed(shop)
    # Each reads the lines, or on PostgreSQL its orders' products where those answer it (rules._ordered_products).
    reading = [sql for sql in statements if f'FROM "{LineItem._meta.db_table}"' in sql or "::bigint[] && " in sql]
    assert len(reading) == len(PRODUCT_CASES)


def test_a_store_recompute_drops_line_summaries_a_killed_worker_left_behind(shop):
    if connection.vendor != "postgresql":
        pytest.skip("the line summary is a table only on PostgreSQL")
    now = timezone.now()
    abandoned, running = line_summary_table(now - dt.timedelta(hours=7)), line_summary_table(now - dt.timedelta(hours=1))
    with connection.cursor() as cursor:
        for table in (abandoned, running):
            cursor.execute(f"CREATE UNLOGGED TABLE {table} (customer_id bigint)")
    _product_segments_recomputed_leaving(shop, {running})


def test_in_segment_reads_the_other_segments_membership(shop):
    store, people = shop
    vip = segment_create(store=store, name="VIP", slug="vip", query="customer_tags CONTAINS 'VIP'")
    segment_recompute(segment=vip)
    members = rule_members(store=store, tree=parse("number_of_orders >= 1 AND NOT in_segment('vip')"))
    assert set(members) == {people["ben"]}


def test_as_of_a_past_day_counts_only_orders_placed_by_then(shop):
    store, people = shop
    as_of = store_today(store) - dt.timedelta(days=60)
    # 60 days ago aki had one order (120 days before today), ben had his; chika was not a customer yet.
    assert set(rule_members(store=store, tree=parse("number_of_orders = 1"), as_of=as_of)) == {
        people["aki"], people["ben"]
    }
    assert set(rule_members(store=store, tree=parse("number_of_orders = 0"), as_of=as_of)) == {people["dai"]}
    # Relative dates count back from the evaluation day: aki's first order was 60 days before it.
    assert set(rule_members(store=store, tree=parse("last_order_date = -60d"), as_of=as_of)) == {people["aki"]}
    assert set(rule_members(store=store, tree=parse("amount_spent = 3000"), as_of=as_of)) == {people["aki"]}
    assert set(rule_members(store=store, tree=parse("first_order_discount_code IS NULL"), as_of=as_of)) == {
        people["ben"], people["dai"]
    }
