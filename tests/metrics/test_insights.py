"""Insights on constructed data: popular tags, products, cohorts, RFM, journeys, campaign lift."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from ecpower.commerce.models import CustomerTag, Product
from ecpower.commerce.services import customer_facts_refresh
from metrics.insights import (
    OUTSIDE,
    campaign_results,
    cohorts,
    journey_transitions,
    popular_tags,
    rfm_summary,
    top_product_types,
    top_products,
)
from metrics.models import Journey, JourneyStage
from segments.models import Membership, MembershipEvent, Segment, SegmentKind
from segments.query_language import parse
from segments.selectors import segment_preview
from tests.factories import CustomerFactory, LineItemFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db
JST = dt.timezone(dt.timedelta(hours=9))


@pytest.fixture
def store():
    return StoreFactory(time_zone="Asia/Tokyo")


def a_list(store, customers, holdout=()) -> Segment:
    segment = Segment.objects.create(store=store, name="list", slug=f"list-{Segment.objects.count()}",
                                     kind=SegmentKind.LIST, member_count=len(customers) + len(holdout))
    for customer in customers:
        Membership.objects.create(store=store, segment=segment, customer=customer, since=dt.date(2025, 1, 1))
    for customer in holdout:
        Membership.objects.create(store=store, segment=segment, customer=customer, since=dt.date(2025, 1, 1),
                                  holdout=True)
    return segment


def test_popular_tags_share_in_the_segment_against_the_store(store):
    customers = [CustomerFactory(store=store) for _ in range(10)]
    members = customers[:4]
    for c in customers[:3] + [customers[9]]:
        CustomerTag.objects.create(store=store, customer=c, name="LINE連携")
    for c in [customers[0], *customers[5:9]]:
        CustomerTag.objects.create(store=store, customer=c, name="vip")
    rows = popular_tags(a_list(store, members))
    assert [(r["name"], r["members"], r["share"], r["store_share"], r["lift"]) for r in rows] == [
        ("LINE連携", 3, Decimal("0.7500"), Decimal("0.4000"), Decimal("1.88")),
        ("vip", 1, Decimal("0.2500"), Decimal("0.5000"), Decimal("0.50")),
    ]


def test_top_products_and_types_of_members_counted_orders_only(store):
    tea = Product.objects.create(store=store, handle="sencha", title="煎茶", product_type="緑茶")
    cup = Product.objects.create(store=store, handle="cup", title="湯呑", product_type="器")
    member, outsider = CustomerFactory(store=store), CustomerFactory(store=store)
    order = OrderFactory(store=store, customer=member, total=Decimal(5000))
    LineItemFactory(order=order, product=tea, quantity=2, unit_price=Decimal(1000))
    LineItemFactory(order=order, product=cup, quantity=1, unit_price=Decimal(3000), discount=Decimal(500))
    cancelled = OrderFactory(store=store, customer=member, cancelled_at=dt.datetime(2025, 1, 1, tzinfo=JST))
    LineItemFactory(order=cancelled, product=cup, quantity=9, unit_price=Decimal(3000))
    LineItemFactory(order=OrderFactory(store=store, customer=outsider), product=tea, quantity=5)
    customer_facts_refresh(store=store)
    segment = a_list(store, [member])
    assert [(r["product_name"], r["units"], r["revenue"], r["buyers"]) for r in top_products(segment)] == [
        ("湯呑", 1, Decimal("2500.00"), 1), ("煎茶", 2, Decimal("2000.00"), 1)]
    assert [r["type_name"] for r in top_product_types(segment)] == ["器", "緑茶"]


def test_cohorts_by_first_purchase_month_in_store_time(store):
    first, second = CustomerFactory(store=store), CustomerFactory(store=store)
    OrderFactory(store=store, customer=first, created_at=dt.datetime(2025, 1, 31, 23, 30, tzinfo=JST),
                 total=Decimal(3000))
    OrderFactory(store=store, customer=first, created_at=dt.datetime(2025, 3, 5, 12, tzinfo=JST), total=Decimal(2500),
                 refunded_amount=Decimal(500))
    # 00:30 on February 1st in Tokyo is still January 31st in UTC: a February cohort here.
    OrderFactory(store=store, customer=second, created_at=dt.datetime(2025, 2, 1, 0, 30, tzinfo=JST),
                 total=Decimal(1000))
    customer_facts_refresh(store=store)
    january, february = cohorts(store, months=3)
    assert (january.month, january.customers, february.month, february.customers) == (
        dt.date(2025, 1, 1), 1, dt.date(2025, 2, 1), 1)
    assert [(c["ltv"], c["repeat_rate"], c["orders_per_customer"]) for c in january.cells] == [
        (Decimal("3000.00"), Decimal("0.0000"), Decimal("1.00")),
        (Decimal("3000.00"), Decimal("0.0000"), Decimal("1.00")),
        (Decimal("5000.00"), Decimal("1.0000"), Decimal("2.00")),
        (Decimal("5000.00"), Decimal("1.0000"), Decimal("2.00")),
    ]
    assert february.cells[0]["ltv"] == Decimal("1000.00")


@pytest.fixture
def rfm_store(store):
    """Ten buyers; buyer i has i + 1 orders of 1,000, the last on day i: all three ranks rise with i."""
    buyers = []
    for i in range(10):
        customer = CustomerFactory(store=store, email=f"buyer{i}@example.jp")
        for k in range(i + 1):
            OrderFactory(store=store, customer=customer, total=Decimal(1000),
                         created_at=dt.datetime(2025, 6, 1, tzinfo=JST) + dt.timedelta(days=i, hours=-k))
        buyers.append(customer)
    prospect = CustomerFactory(store=store, email="prospect@example.jp")
    customer_facts_refresh(store=store)
    return buyers, prospect


def test_rfm_scores_by_quintile_and_groups(store, rfm_store):
    buyers, prospect = rfm_store

    def members(query):
        preview = segment_preview(store=store, tree=parse(query), sample_size=20)
        return {c.email for c in preview.sample}

    # Buyer i scores 1 + i // 2 on R, F and M: 8 and 9 are CHAMPIONS, 0 and 1 DORMANT, 4 and 5 NEEDS_ATTENTION.
    assert members("rfm_group = 'CHAMPIONS'") == {"buyer8@example.jp", "buyer9@example.jp"}
    assert members("rfm_group = 'DORMANT'") == {"buyer0@example.jp", "buyer1@example.jp"}
    assert members("rfm_group = 'NEEDS_ATTENTION'") == {"buyer4@example.jp", "buyer5@example.jp"}
    assert members("rfm_group = 'PROSPECTS'") == {"prospect@example.jp"}
    assert len(members("NOT rfm_group = 'CHAMPIONS'")) == 9
    summary = rfm_summary(store)
    counts = {g["group"]: g["customers"] for g in summary.groups}
    assert counts["CHAMPIONS"] == 2 and counts["PROSPECTS"] == 1 and summary.customers == 11
    assert summary.grid[5] == [0, 0, 0, 0, 2] and summary.grid[1] == [2, 0, 0, 0, 0]
    champions = next(g for g in summary.groups if g["group"] == "CHAMPIONS")
    assert (champions["orders"], champions["spent"]) == (19, Decimal("19000.00"))


def test_equal_values_get_equal_scores(store):
    for n in range(5):
        customer = CustomerFactory(store=store)
        OrderFactory(store=store, customer=customer, total=Decimal(1000),
                     created_at=dt.datetime(2025, 6, 1, tzinfo=JST) + dt.timedelta(days=n))
    customer_facts_refresh(store=store)
    summary = rfm_summary(store)
    # Same order count and spend for all: F = M = 1 for everyone, so FM = 1 whatever R is.
    assert sum(summary.grid[1]) == 5


def test_journey_moves_between_stages_over_a_window(store):
    first, repeat, loyal = (Segment.objects.create(store=store, name=n, slug=n, rule={}, member_count=k)
                            for n, k in (("first", 5), ("repeat", 3), ("loyal", 1)))
    journey = Journey.objects.create(store=store, name="lifecycle")
    for position, segment in enumerate((first, repeat, loyal)):
        JourneyStage.objects.create(journey=journey, segment=segment, position=position)
    x, y, z, w, v = (CustomerFactory(store=store) for _ in range(5))

    def event(segment, customer, kind, day):
        MembershipEvent.objects.create(store=store, segment=segment, customer=customer, kind=kind,
                                       date=dt.date(2025, 6, day))

    event(first, x, "joined", 1), event(first, x, "left", 5), event(repeat, x, "joined", 5)  # first → repeat
    event(repeat, y, "joined", 6)  # from outside the journey
    event(first, z, "joined", 1), event(first, z, "left", 6)  # first → nowhere
    event(first, w, "joined", 1), event(repeat, w, "joined", 2)  # before the window
    event(repeat, v, "joined", 1), event(loyal, v, "joined", 8)  # still in repeat too: repeat → loyal
    u = CustomerFactory(store=store)
    event(first, u, "joined", 1), event(first, u, "left", 2), event(repeat, u, "joined", 4)  # left before: outside
    # Their memberships today, as the events left them: a stage joined before the window and never left
    # (v in repeat) is known from the membership.
    for segment, customer in ((repeat, x), (repeat, y), (first, w), (repeat, w), (repeat, v), (loyal, v),
                              (repeat, u)):
        Membership.objects.create(store=store, segment=segment, customer=customer, since=dt.date(2025, 6, 1))

    report = journey_transitions(journey, dt.date(2025, 6, 3), dt.date(2025, 6, 9))
    assert report.moves == {(first.pk, repeat.pk): 1, (repeat.pk, loyal.pk): 1, (OUTSIDE, repeat.pk): 2,
                            (first.pk, OUTSIDE): 1}
    assert report.members == {first.pk: 5, repeat.pk: 3, loyal.pk: 1}
    assert report.matrix()[0] == (first.pk, [0, 1, 0, 1])
    default = journey_transitions(journey)  # the last 7 days: nothing moved
    assert default.moves == {} and (default.end - default.start).days == 6


def test_campaign_targets_against_holdout_with_lift_and_interval(store):
    targets = [CustomerFactory(store=store) for _ in range(4)]
    holdout = [CustomerFactory(store=store) for _ in range(4)]
    in_period = dt.datetime(2025, 6, 10, 12, tzinfo=JST)
    for customer in (targets[0], targets[1], holdout[0]):
        OrderFactory(store=store, customer=customer, created_at=in_period, total=Decimal(1000))
    OrderFactory(store=store, customer=targets[2], created_at=dt.datetime(2025, 6, 9, 23, tzinfo=JST),
                 total=Decimal(9000))  # the day before the campaign
    customer_facts_refresh(store=store)
    result = campaign_results(a_list(store, targets, holdout), dt.date(2025, 6, 10), dt.date(2025, 6, 16))
    assert (result.targets.customers, result.targets.buyers, result.targets.revenue) == (4, 2, Decimal("2000.00"))
    assert (result.holdout.customers, result.holdout.buyers, result.holdout.revenue) == (4, 1, Decimal("1000.00"))
    difference, (low, high), lift = result.conversion_difference
    assert difference == pytest.approx(0.25) and lift == pytest.approx(1.0)
    # √(0.5·0.5/4 + 0.25·0.75/4) = 0.3307…; ± 1.96 of it.
    assert (low, high) == (pytest.approx(0.25 - 0.6482, abs=1e-3), pytest.approx(0.25 + 0.6482, abs=1e-3))
    revenue, _interval, revenue_lift = result.revenue_difference
    assert revenue == pytest.approx(250.0) and revenue_lift == pytest.approx(1.0)
    assert result.incremental_revenue == pytest.approx(1000.0)
    no_holdout = campaign_results(a_list(store, targets), dt.date(2025, 6, 10), dt.date(2025, 6, 16))
    assert no_holdout.holdout is None and no_holdout.conversion_difference == (None, None, None)


def test_a_segment_group_becomes_a_journey_whose_stages_follow_the_group(store):
    from metrics.services import journey_from_group
    from segments.models import SegmentGroup

    group = SegmentGroup.objects.create(store=store, name="ライフサイクル")
    first, repeat = (Segment.objects.create(store=store, name=n, slug=n, rule={}) for n in ("a-first", "b-repeat"))
    group.segments.add(first, repeat)
    journey = journey_from_group(group)
    assert (journey.name, [s.segment_id for s in journey.stages.all()]) == ("ライフサイクル", [first.pk, repeat.pk])
    loyal = Segment.objects.create(store=store, name="c-loyal", slug="c-loyal", rule={})
    group.segments.remove(first)
    group.segments.add(loyal)
    again = journey_from_group(group)
    assert again.pk == journey.pk and [s.segment_id for s in again.stages.all()] == [repeat.pk, loyal.pk]


@pytest.mark.django_db(transaction=True)  # the side-by-side connections see committed rows only
def test_a_large_segments_products_and_types_are_read_side_by_side_with_the_same_rows(monkeypatch):
    from django.db import connection
    from django.db.backends.signals import connection_created

    from metrics import insights

    store = StoreFactory(time_zone="Asia/Tokyo")
    tea = Product.objects.create(store=store, handle="sencha", title="煎茶", product_type="緑茶")
    cup = Product.objects.create(store=store, handle="cup", title="湯呑", product_type="器")
    customers = [CustomerFactory(store=store) for _ in range(4)]
    for n, customer in enumerate(customers):
        order = OrderFactory(store=store, customer=customer)
        LineItemFactory(order=order, product=tea, quantity=n + 1, unit_price=Decimal(1000))
        if n % 2:
            LineItemFactory(order=order, product=cup, quantity=1, unit_price=Decimal(3000))
    customer_facts_refresh(store=store)
    segment = a_list(store, customers[1:])
    one_by_one = (top_products(segment), top_product_types(segment))

    opened = []
    connection_created.connect(lambda **kwargs: opened.append(kwargs["connection"]), weak=False, dispatch_uid="t")
    monkeypatch.setattr(insights, "PRODUCTS_SIDE_BY_SIDE_ABOVE", 2)  # this segment of 3 counts as large
    try:
        found = insights.segment_products(segment)
        assert (found.products, found.types) == one_by_one and found.sampled is None
    finally:
        connection_created.disconnect(dispatch_uid="t")
    assert [(r["product_name"], r["buyers"]) for r in one_by_one[0]] == [("煎茶", 3), ("湯呑", 2)]
    assert len(opened) == (2 if connection.vendor == "postgresql" else 0)  # a connection per table


@pytest.mark.django_db(transaction=True)  # the side-by-side connections see committed rows only
def test_a_large_stores_cohorts_are_counted_in_halves_side_by_side_and_added(monkeypatch):
    from django.db import connection
    from django.db.backends.signals import connection_created

    from metrics import insights

    store = StoreFactory(time_zone="Asia/Tokyo")
    customers = [CustomerFactory(store=store) for _ in range(4)]
    for n, customer in enumerate(customers):  # one January cohort; every cell has customers of both halves
        OrderFactory(store=store, customer=customer, created_at=dt.datetime(2025, 1, 10 + n, tzinfo=JST),
                     total=Decimal(1000 * (n + 1)))
        if n % 2 == 0 or n == 3:
            OrderFactory(store=store, customer=customer, created_at=dt.datetime(2025, 3, 1 + n, tzinfo=JST),
                         total=Decimal(500), refunded_amount=Decimal(100 * n))
    customer_facts_refresh(store=store)
    segment = a_list(store, customers[1:])

    def table(found):
        return [(c.month, c.customers, [(k["ltv"], k["repeat_rate"], k["orders_per_customer"]) for k in c.cells])
                for c in found]

    whole, members = table(cohorts(store, months=2)), table(cohorts(store, segment, months=2))
    opened = []
    connection_created.connect(lambda **kwargs: opened.append(kwargs["connection"]), weak=False, dispatch_uid="c")
    monkeypatch.setattr(insights, "COHORTS_IN_PARTS_ABOVE", 1)  # four customers count as a large store
    try:
        assert table(cohorts(store, months=2)) == whole
        assert table(cohorts(store, segment, months=2)) == members
    finally:
        connection_created.disconnect(dispatch_uid="c")
    # 10,000 of first orders, then 3 second orders of 500 less refunds of 0, 200 and 300 = 1,000.
    assert whole == [(dt.date(2025, 1, 1), 4, [(Decimal("2500.00"), Decimal("0.0000"), Decimal("1.00")),
                                               (Decimal("2500.00"), Decimal("0.0000"), Decimal("1.00")),
                                               (Decimal("2750.00"), Decimal("0.7500"), Decimal("1.75"))])]
    assert members[0][1] == 3
    assert len(opened) == (4 if connection.vendor == "postgresql" else 0)  # a connection per half, twice


def test_a_very_large_segments_products_are_estimated_from_a_sample_of_members_unless_asked_exactly(
        store, monkeypatch, staff_client):
    from django.urls import reverse

    from metrics import insights

    tea = Product.objects.create(store=store, handle="sencha", title="煎茶", product_type="緑茶")
    cup = Product.objects.create(store=store, handle="cup", title="湯呑", product_type="器")
    members = [CustomerFactory(store=store) for _ in range(6)]
    for customer in members:  # every member buys the same: a sample of any 2 scales to the whole exactly
        order = OrderFactory(store=store, customer=customer)
        LineItemFactory(order=order, product=tea, quantity=2, unit_price=Decimal(1000))
        LineItemFactory(order=order, product=cup, quantity=1, unit_price=Decimal(3000))
    customer_facts_refresh(store=store)
    segment = a_list(store, members)
    exact = insights.segment_products(segment)
    assert exact.sampled is None and [(r["product_name"], r["orders"], r["buyers"], r["units"], r["revenue"])
                                      for r in exact.products] == [("湯呑", 6, 6, 6, Decimal("18000.00")),
                                                                   ("煎茶", 6, 6, 12, Decimal("12000.00"))]
    monkeypatch.setattr(insights, "PRODUCTS_SAMPLE_ABOVE", 5)
    monkeypatch.setattr(insights, "PRODUCTS_SAMPLE_SIZE", 2)
    sampled = insights.segment_products(segment)
    assert (sampled.members, sampled.sampled, sampled.scale) == (6, 2, 3)
    assert [(r["product_name"], r["orders"], r["buyers"], r["units"], r["revenue"]) for r in sampled.products] == [
        ("湯呑", 6, 6, 6, Decimal("18000")), ("煎茶", 6, 6, 12, Decimal("12000"))]
    assert [(r["type_name"], r["buyers"]) for r in sampled.types] == [("器", 6), ("緑茶", 6)]
    assert insights.segment_products(segment).products == sampled.products  # the same draw all day
    assert insights.segment_products(segment, exact=True).sampled is None

    # The page says it is an estimate, from how many members, and links to the exact figures.
    url = reverse("admin:metrics_products", args=[segment.pk])
    page = staff_client.get(url)
    note = page.context["tables"][0].note
    assert all(figure in note for figure in ("2", "6", "3.00")), note  # sampled, members, the scale
    assert page.context["exact_url"] == "?exact=1" and 'id="products-sampled"' in page.content.decode()
    assert "-products-estimated-" in staff_client.get(url + "?format=csv")["Content-Disposition"]
    full = staff_client.get(url + "?exact=1")
    assert full.context["exact_url"] == "" and full.context["tables"][0].note == ""
    assert full.context["tables"][0].rows[0] == ["湯呑", 6, 6, 6, Decimal("18000.00")]


def test_a_sample_of_members_scales_what_the_sampled_members_bought(store, monkeypatch):
    from metrics import insights

    tea = Product.objects.create(store=store, handle="sencha", title="煎茶", product_type="緑茶")
    members = [CustomerFactory(store=store) for _ in range(4)]
    for n, customer in enumerate(members):
        order = OrderFactory(store=store, customer=customer)
        LineItemFactory(order=order, product=tea, quantity=n + 1, unit_price=Decimal(1000))
    customer_facts_refresh(store=store)
    segment = a_list(store, members)
    monkeypatch.setattr(insights, "PRODUCTS_SAMPLE_ABOVE", 3)
    monkeypatch.setattr(insights, "PRODUCTS_SAMPLE_SIZE", 2)
    drawn, total = insights._member_sample(segment, 2)
    units = {customer.pk: n + 1 for n, customer in enumerate(members)}
    bought = sum(units[pk] for pk in drawn)  # what the two drawn members bought
    (row,) = insights.segment_products(segment).products
    assert total == 4 and row["units"] == bought * 2 and row["revenue"] == Decimal(bought * 2000)
