"""Random stores × random rule trees: the compiled SQL selects exactly what the oracle selects."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from ecpower.commerce.models import CustomerTag, LineItem, Order, ProductTag
from ecpower.commerce.services import customer_facts_refresh
from segments import rules
from segments.query_language import parse, to_text
from segments.selectors import evaluation_context, segment_preview, store_today
from segments.services import segment_create, segment_recompute
from tests.factories import CustomerFactory, ProductFactory, StoreFactory
from tests.segments.oracle import Oracle

# Absolute dates and order days are drawn near the days the relative dates name, so boundaries
# (the day itself, the day before, the day after) are hit often.
_TODAY = dt.datetime.now(ZoneInfo("Asia/Tokyo")).date()
DATES = ["-30d", "-2w", "-3m", "-1y", "-400d", "today", "yesterday", "+0d",
         (_TODAY - dt.timedelta(days=100)).isoformat(), (_TODAY - dt.timedelta(days=246)).isoformat()]
# Days back from the evaluation day that the relative and absolute dates above name.
BACK_DAYS = [0, 1, 14, 30, 91, 92, 100, 246, 365, 366, 400]
order_day = st.tuples(st.sampled_from(BACK_DAYS), st.sampled_from([-1, 0, 0, 1]))


def numbers(field, values):
    single = st.builds(lambda op, v: {"field": field, "op": op, "value": v},
                       st.sampled_from(rules.COMPARISONS), st.sampled_from(values))
    between = st.builds(lambda a, b: {"field": field, "op": "between", "value": [a, b]},
                        st.sampled_from(values), st.sampled_from(values))
    return single | between


def dates(field):
    single = st.builds(lambda op, v: {"field": field, "op": op, "value": v},
                       st.sampled_from(rules.COMPARISONS), st.sampled_from(DATES))
    between = st.builds(lambda a, b: {"field": field, "op": "between", "value": [a, b]},
                        st.sampled_from(DATES), st.sampled_from(DATES))
    null = st.builds(lambda op: {"field": field, "op": op}, st.sampled_from(["is_null", "is_not_null"]))
    return single | between | null


def listed(field, values):
    return st.builds(lambda op, v: {"field": field, "op": op, "value": v},
                     st.sampled_from(rules.LIST_OPS), st.sampled_from(values))


def text(field, values):
    return st.builds(lambda op, v: {"field": field, "op": op, "value": v}, st.sampled_from(["=", "!="]),
                     st.sampled_from(values)) | st.builds(lambda op: {"field": field, "op": op},
                                                          st.sampled_from(["is_null", "is_not_null"]))


def param_number(values):
    return st.builds(lambda op, v: {"op": op, "value": v}, st.sampled_from(rules.COMPARISONS),
                     st.sampled_from(values)) | st.builds(lambda a, b: {"op": "between", "value": [a, b]},
                                                          st.sampled_from(values), st.sampled_from(values))


def param_text(values):
    return st.builds(lambda v: {"op": "=", "value": v}, st.sampled_from(values)) | st.builds(
        lambda vs: {"op": "in", "value": vs}, st.lists(st.sampled_from(values), min_size=1, max_size=3))


param_date = st.builds(lambda op, v: {"op": op, "value": v}, st.sampled_from(rules.COMPARISONS),
                       st.sampled_from(DATES)) | st.builds(lambda a, b: {"op": "between", "value": [a, b]},
                                                           st.sampled_from(DATES), st.sampled_from(DATES))

PRODUCT_PARAMS = {
    "id": st.builds(lambda v: {"op": "=", "value": v}, st.sampled_from([101, 102, 103]))
    | st.builds(lambda vs: {"op": "in", "value": vs}, st.lists(st.sampled_from([101, 102, 103, 104]), min_size=1)),
    "sku": param_text(["TEA-1", "tea-2", "CUP-1"]),
    "product_type": param_text(["緑茶", "器"]),
    "vendor": param_text(["静岡茶園", "有田窯"]),
    "tag": param_text(["tea", "Color:Blue", "gift"]),
    "date": param_date,
    "order_number": param_number([1, 2, 3]),
    "count": param_number([0, 1, 2, 3]),
    "sum_quantity": param_number([0, 1, 2, 4]),
}
ORDER_PARAMS = {
    "date": param_date,
    "amount": param_number([0, 1000, 3000]),
    "discount_code": param_text(["WELCOME10", "line500"]),
    "source": param_text(["web", "pos"]),
    "utm_campaign": param_text(["insta_spring"]),
    "count": param_number([0, 1, 2, 3]),
    "sum_amount": param_number([0, 2000, 5000]),
}


def function(field, specs):
    return st.builds(
        lambda op, params: {"field": field, "op": op, "params": params},
        st.sampled_from(rules.FUNCTION_OPS),
        st.fixed_dictionaries({}, optional=specs),
    )


leaf = st.one_of(
    numbers("number_of_orders", [0, 1, 2, 3]),
    numbers("amount_spent", [0, 1000, 2500, 6000.5]),
    numbers("average_order_value", [0, 1000, 1500]),
    dates("first_order_date"),
    dates("last_order_date"),
    dates("customer_added_date"),
    listed("customer_tags", ["vip", "VIP", "LINE連携", "nobody"]),
    listed("customer_countries", ["JP", "us"]),
    listed("customer_regions", ["JP-13", "jp-27"]),
    listed("customer_cities", ["渋谷区"]),
    st.builds(lambda op, v: {"field": "email_subscription_status", "op": op, "value": v},
              st.sampled_from(["=", "!="]), st.sampled_from(["SUBSCRIBED", "NOT_SUBSCRIBED"])),
    st.builds(lambda op, v: {"field": "sms_subscription_status", "op": op, "value": v},
              st.sampled_from(["=", "!="]), st.sampled_from(["SUBSCRIBED", "UNSUBSCRIBED"])),
    text("first_order_discount_code", ["WELCOME10", "welcome10", "LINE500"]),
    text("first_order_source", ["web", "pos"]),
    text("first_order_utm_campaign", ["insta_spring"]),
    function("products_purchased", PRODUCT_PARAMS),
    function("orders_placed", ORDER_PARAMS),
    st.just({"field": "in_segment", "op": "=", "value": "base"}),
)

trees = st.recursive(
    leaf,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda xs: {"and": xs}),
        st.lists(children, min_size=1, max_size=3).map(lambda xs: {"or": xs}),
        children.map(lambda x: {"not": x}),
    ),
    max_leaves=6,
)

customer_spec = st.fixed_dictionaries({
    "tags": st.sets(st.sampled_from(["VIP", "LINE連携", "wholesale"]), max_size=2),
    "country": st.sampled_from(["JP", "JP", "US", ""]),
    "province": st.sampled_from(["JP-13", "JP-27", ""]),
    "city": st.sampled_from(["渋谷区", "大阪市", ""]),
    "email": st.sampled_from(["SUBSCRIBED", "NOT_SUBSCRIBED", "UNSUBSCRIBED"]),
    "sms": st.sampled_from(["SUBSCRIBED", "NOT_SUBSCRIBED"]),
    "added": st.none() | order_day,
})
order_spec = st.fixed_dictionaries({
    "customer": st.integers(0, 5),  # 5 = guest
    "day": order_day,
    "hour": st.sampled_from([0, 8, 23]),  # near both ends of the local day
    "total": st.sampled_from([0, 980, 1000, 2500, 3000, 6000]),
    "refund": st.sampled_from([0, 0, 500]),
    "cancelled": st.integers(0, 7).map(lambda n: n == 0),
    "test": st.integers(0, 9).map(lambda n: n == 0),
    "code": st.sampled_from(["", "WELCOME10", "LINE500"]),
    "source": st.sampled_from(["web", "pos", ""]),
    "utm": st.sampled_from(["", "insta_spring"]),
    "lines": st.lists(st.tuples(st.integers(0, 4), st.integers(1, 3)), min_size=1, max_size=3),  # 4 = unlinked
})


def build_store(customers, orders, days_back=0):
    """A store whose dates sit on, just before and just after the days the rules name."""
    store = StoreFactory(time_zone="Asia/Tokyo")
    zone = store.zone
    today = store_today(store)
    made = []
    for spec in customers:
        added = None
        if spec["added"] is not None:
            back, edge = spec["added"]
            added = dt.datetime.combine(today - dt.timedelta(days=max(0, days_back + back + edge)), dt.time(12),
                                        tzinfo=zone)
        customer = CustomerFactory(
            store=store, country_code=spec["country"], province_code=spec["province"], city=spec["city"],
            email_marketing=spec["email"], sms_marketing=spec["sms"], shopify_created_at=added,
        )
        for tag in spec["tags"]:
            CustomerTag.objects.create(store=store, customer=customer, name=tag)
        made.append(customer)
    products = [
        ProductFactory(store=store, shopify_id=101, product_type="緑茶", vendor="静岡茶園"),
        ProductFactory(store=store, shopify_id=102, product_type="器", vendor="有田窯"),
        ProductFactory(store=store, shopify_id=103, product_type="", vendor=""),
        ProductFactory(store=store, shopify_id=None, product_type="緑茶", vendor="八女茶園"),
    ]
    for product, tags in zip(products, [["tea"], ["color:blue", "gift"], ["tea", "gift"], []], strict=True):
        for tag in tags:
            ProductTag.objects.create(store=store, product=product, name=tag)
    skus = ["TEA-1", "CUP-1", "TEA-2", "", "tea-2"]
    for n, spec in enumerate(orders):
        back, edge = spec["day"]
        created = dt.datetime.combine(today - dt.timedelta(days=max(0, days_back + back + edge)),
                                      dt.time(spec["hour"], 30), tzinfo=zone)
        order = Order.objects.create(
            store=store, customer=made[spec["customer"]] if spec["customer"] < 5 else None, name=f"#{n}",
            created_at=created, total=Decimal(spec["total"]), refunded_amount=Decimal(min(spec["refund"], spec["total"])),
            cancelled_at=created if spec["cancelled"] else None, test=spec["test"], discount_code=spec["code"],
            source_name=spec["source"], utm_campaign=spec["utm"],
        )
        for position, (index, quantity) in enumerate(spec["lines"], 1):
            product = products[index] if index < 4 else None
            LineItem.objects.create(
                store=store, order=order, product=product, sku=skus[index], title="x", quantity=quantity,
                product_type="器" if index == 4 else "", vendor="", position=position,
            )
    customer_facts_refresh(store=store)
    return store, today


class CompiledRulesAgreeWithTheOracle(TestCase):
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        customers=st.lists(customer_spec, min_size=5, max_size=5),
        orders=st.lists(order_spec, min_size=3, max_size=14),
        many=st.lists(trees, min_size=8, max_size=8),
        base=trees.filter(lambda t: "in_segment" not in str(t)),
        days_back=st.sampled_from([0, 0, 1, 45, 200]),
    )
    def test_sql_members_equal_python_members(self, customers, orders, many, base, days_back):
        store, today = build_store(customers, orders, days_back)
        other = CustomerFactory(store=StoreFactory(), email="other-store@example.jp")  # never selected
        base_segment = segment_create(store=store, name="base", slug="base", rule=base)
        segment_recompute(segment=base_segment)

        as_of = today - dt.timedelta(days=days_back)
        oracle = Oracle(store, as_of=as_of, today=today)
        context = evaluation_context(store=store, as_of=as_of)
        for tree in many:  # building a store costs more than evaluating, so each store gets several rules
            tree = rules.check(tree)
            got = set(rules.members_queryset(tree, context).values_list("id", flat=True))
            want = oracle.member_ids(tree)
            assert got == want, (to_text(tree), as_of, sorted(got ^ want))
        # An incremental update's way: every rule's verdict in one statement, for some customers only
        # (one of another store's among them, never selected).
        checked = [rules.check(tree) for tree in many]
        scope = [*store.customers.order_by("pk").values_list("pk", flat=True)[:3], other.pk]
        rows = rules.verdict_rows(checked, evaluation_context(store=store, as_of=as_of, scope=scope))
        assert sorted(row[0] for row in rows) == sorted(  # one row per customer of the day, in scope
            rules.universe(evaluation_context(store=store, as_of=as_of)).filter(pk__in=scope).values_list("pk", flat=True))
        for index, tree in enumerate(checked):
            got = {row[0] for row in rows if row[1 + index]}
            assert got == oracle.member_ids(tree) & set(scope), (to_text(tree), as_of, "one statement")
        if as_of < today:
            # The snapshot walk's way: fact conditions read the day's aggregates from one table.
            from metrics import snapshots

            snapshots._create_tables()
            with connection.cursor() as cursor:
                snapshots._fill_stats(cursor, store, as_of)
            context.facts_table = snapshots.STATS
            for tree in many:
                tree = rules.check(tree)
                got = set(rules.members_queryset(tree, context).values_list("id", flat=True))
                assert got == oracle.member_ids(tree), (to_text(tree), as_of, "facts table")


# products_purchased conditions the orders' products answer on PostgreSQL (rules._ordered_products).
ordered_products = st.builds(
    lambda op, product, params: {"field": "products_purchased", "op": op, "params": {**product, **params}},
    st.sampled_from(rules.FUNCTION_OPS),
    st.fixed_dictionaries({}, optional={name: PRODUCT_PARAMS[name] for name in ("id", "tag")}).filter(bool),
    st.fixed_dictionaries({}, optional={name: PRODUCT_PARAMS[name] for name in ("date", "order_number", "count")}),
)


class OrderProductsAgreeWithTheLines(TestCase):
    """The orders' products (``Order.product_ids``, filled from the lines by the facts refresh) answer the
    conditions they can exactly as the lines do, and as the oracle does."""

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        customers=st.lists(customer_spec, min_size=5, max_size=5),
        orders=st.lists(order_spec, min_size=3, max_size=14),
        conditions=st.lists(ordered_products, min_size=6, max_size=6),
        days_back=st.sampled_from([0, 0, 45]),
    )
    def test_the_orders_products_select_what_the_lines_select(self, customers, orders, conditions, days_back):
        store, today = build_store(customers, orders, days_back)
        as_of = today - dt.timedelta(days=days_back)
        oracle = Oracle(store, as_of=as_of, today=today)
        by_orders = evaluation_context(store=store, as_of=as_of)
        by_lines = evaluation_context(store=store, as_of=as_of)
        by_lines.order_products_known = None
        for tree in conditions:
            tree = rules.check(tree)
            members = rules.members_queryset(tree, by_orders)
            if connection.vendor == "postgresql":
                assert "product_ids" in str(members.query), to_text(tree)
            got = set(members.values_list("id", flat=True))
            lines = set(rules.members_queryset(tree, by_lines).values_list("id", flat=True))
            assert "product_ids" not in str(rules.members_queryset(tree, by_lines).query)
            assert got == lines == oracle.member_ids(tree), (to_text(tree), as_of, sorted(got ^ lines))
            # The builder's preview: a rule of one such condition is counted from its buyers' orders alone
            # (rules.ordered_products_buyers), with the same count and the same latest buyers first.
            preview = segment_preview(store=store, tree=tree, as_of=as_of, sample_size=50)
            latest = store.customers.filter(pk__in=lines).order_by("-last_order_at", "-id").values_list("pk", flat=True)
            assert (preview.count, [c.pk for c in preview.sample]) == (len(lines), list(latest[:50])), to_text(tree)
            count = tree["params"].get("count", {"op": ">", "value": 0})
            if connection.vendor == "postgresql" and not days_back and tree["op"] == "matches" and not rules._satisfies(
                    0, count["op"], rules._comparable(count["op"], count["value"])):
                assert rules.ordered_products_buyers(tree, by_orders) is not None, to_text(tree)

    def test_a_buyers_orders_on_the_first_day_of_the_window_count_in_the_preview(self):
        # The buyers' count groups only the orders from the date test's first day on (rules._date_start):
        # orders at half past midnight on that day, the day before and the day after.
        spec = {"hour": 0, "total": 1000, "refund": 0, "cancelled": False, "test": False, "code": "", "source": "web",
                "utm": "", "lines": [(0, 1)]}
        days = [(365, -1), (365, 0), (365, 1), (366, 0), (92, 0), (92, -1), (30, 0)]
        orders = [{**spec, "customer": customer, "day": day} for customer, day in enumerate(days)]
        orders += [{**spec, "customer": 0, "day": day} for day in [(365, -1), (365, -1), (14, 0)]]
        orders += [{**spec, "customer": 1, "day": day, "lines": [(1, 1)]} for day in [(1, 0), (0, 0)]]
        store, _today = build_store([{"tags": set(), "country": "", "province": "", "city": "", "email": "SUBSCRIBED",
                                      "sms": "SUBSCRIBED", "added": None}] * 7, orders)
        by_lines = evaluation_context(store=store)
        by_lines.order_products_known = None
        for query in ["date > -1y", "date >= -1y", "date > -1y, count >= 2", "date > -1y, count >= 3",
                      "date BETWEEN -1y AND -3m", "date > -3m", "date = -1y"]:
            tree = rules.check(parse(f"products_purchased MATCHES (tag = 'tea', {query})"))
            if connection.vendor == "postgresql":
                assert rules.ordered_products_buyers(tree, evaluation_context(store=store)) is not None, query
            lines = rules.members_queryset(tree, by_lines)
            latest = lines.order_by("-last_order_at", "-id").values_list("pk", flat=True)
            preview = segment_preview(store=store, tree=tree, sample_size=50)
            assert (preview.count, [c.pk for c in preview.sample]) == (lines.count(), list(latest)), query


@settings(max_examples=300, deadline=None)
@given(tree=trees)
def test_print_then_parse_is_the_identity_on_random_trees(tree):
    tree = rules.normalize(tree)
    assert not rules.validate(tree)
    assert parse(to_text(tree)) == tree
