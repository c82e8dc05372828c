"""Recompute: membership diff, events, idempotency, claims, errors, dependency order, versions."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from ecpower.commerce.models import Order
from ecpower.commerce.services import customer_facts_refresh
from metrics.models import SnapshotMember
from segments.models import Membership, MembershipEvent, Segment, SegmentKind, SegmentStatus
from segments.query_language import parse
from segments.rules import InvalidRule
from segments.selectors import customer_memberships, dependency_order, segment_explain, segment_preview, store_today
from segments.services import (
    SegmentBusy,
    customers_segments_recompute,
    segment_create,
    segment_duplicate,
    segment_recompute,
    segment_update,
    segments_recompute_together,
    store_segments_recompute,
)
from tests.factories import CustomerFactory, OrderFactory, StoreFactory


def buy(customer, days_ago=0, total=1000):
    today = store_today(customer.store)
    created = dt.datetime.combine(today - dt.timedelta(days=days_ago), dt.time(12), tzinfo=customer.store.zone)
    order = OrderFactory(store=customer.store, customer=customer, created_at=created, total=Decimal(total))
    customer_facts_refresh(store=customer.store, customer_ids=[customer.pk])
    return order


@pytest.fixture
def store(db):
    return StoreFactory(shopify_domain="tea.myshopify.com")


def members(segment):
    return set(Membership.objects.filter(segment=segment).values_list("customer_id", flat=True))


def events(segment):
    return sorted(MembershipEvent.objects.filter(segment=segment).values_list("customer_id", "kind", "date"))


def test_recompute_records_joins_and_leaves_and_nothing_when_nothing_changed(store):
    a, b, c = (CustomerFactory(store=store) for _ in range(3))
    buy(a), buy(a), buy(b)
    segment = segment_create(store=store, name="Repeaters", slug="repeaters", query="number_of_orders >= 2")
    today = store_today(store)

    first = segment_recompute(segment=segment)
    assert (first.members, first.joined, first.left) == (1, 1, 0)
    assert members(segment) == {a.pk}
    assert Membership.objects.get(segment=segment).since == today

    again = segment_recompute(segment=segment)
    assert (again.members, again.joined, again.left) == (1, 0, 0)
    assert len(events(segment)) == 1

    buy(b)
    Order.objects.filter(customer=a).update(cancelled_at=timezone.now())
    customer_facts_refresh(store=store)
    third = segment_recompute(segment=segment)
    assert (third.members, third.joined, third.left) == (1, 1, 1)
    assert members(segment) == {b.pk}
    assert events(segment) == [(a.pk, "joined", today), (a.pk, "left", today), (b.pk, "joined", today)]
    segment.refresh_from_db()
    assert segment.status == SegmentStatus.SUCCEEDED
    assert (segment.member_count, segment.last_joined, segment.last_left) == (1, 1, 1)
    assert segment.last_computed_for == today and segment.last_duration_ms is not None
    assert c.pk not in members(segment)


def test_recompute_is_a_handful_of_queries_whatever_the_size(store, django_assert_max_num_queries):
    for n in range(30):
        customer = CustomerFactory(store=store)
        if n % 2:
            buy(customer, days_ago=n)
    segment = segment_create(
        store=store, name="x", slug="x",
        query="orders_placed MATCHES (date > -1y, count >= 1) AND NOT last_order_date < -10d",
    )
    with django_assert_max_num_queries(16):
        result = segment_recompute(segment=segment)
    assert result.members == 5  # odd days 1..9


def test_a_claimed_segment_is_not_computed_twice(store):
    segment = segment_create(store=store, name="x", slug="x", query="number_of_orders = 0")
    Segment.objects.filter(pk=segment.pk).update(status=SegmentStatus.RUNNING, computing_started_at=timezone.now())
    with pytest.raises(SegmentBusy):
        segment_recompute(segment=segment)
    # A claim left behind by a killed worker expires.
    Segment.objects.filter(pk=segment.pk).update(computing_started_at=timezone.now() - dt.timedelta(hours=2))
    assert segment_recompute(segment=segment).members == 0


def test_a_failing_recompute_is_recorded_and_leaves_membership_alone(store):
    customer = CustomerFactory(store=store)
    segment = segment_create(store=store, name="x", slug="x", query="number_of_orders = 0")
    segment_recompute(segment=segment)
    Segment.objects.filter(pk=segment.pk).update(rule={"field": "nonsense", "op": "=", "value": 1})
    segment.refresh_from_db()
    with pytest.raises(InvalidRule):
        segment_recompute(segment=segment)
    segment.refresh_from_db()
    assert segment.status == SegmentStatus.FAILED
    assert "nonsense" in segment.last_error
    assert members(segment) == {customer.pk}


def test_store_recompute_runs_segments_after_those_they_refer_to(store):
    a = CustomerFactory(store=store)
    buy(a)
    # Created in the "wrong" order: the outer segment's name sorts first.
    inner = segment_create(store=store, name="buyers", slug="z-buyers", query="number_of_orders >= 1")
    outer = segment_create(store=store, name="outer", slug="a-outer", query="in_segment('z-buyers')")
    ordered, cyclic = dependency_order(Segment.objects.filter(store=store))
    assert [s.slug for s in ordered] == ["z-buyers", "a-outer"] and not cyclic
    outcome = store_segments_recompute(store=store)
    assert not outcome.failed
    assert members(inner) == members(outer) == {a.pk}


def test_cycles_and_unknown_segments_are_refused_when_saving(store):
    segment_create(store=store, name="a", slug="a", query="number_of_orders >= 1")
    segment_create(store=store, name="b", slug="b", query="in_segment('a')")
    a = Segment.objects.get(slug="a")
    with pytest.raises(InvalidRule, match="cycle: a → b → a"):
        segment_update(segment=a, query="in_segment('b')")
    with pytest.raises(InvalidRule, match="no segment 'ghost'"):
        segment_create(store=store, name="c", slug="c", query="in_segment('ghost')")
    with pytest.raises(InvalidRule, match="cycle"):
        segment_create(store=store, name="self", slug="self", query="in_segment('self') OR number_of_orders = 1")


def test_every_change_of_the_rule_keeps_a_version(store, django_user_model):
    user = django_user_model.objects.create(username="hanako")
    segment = segment_create(store=store, name="x", slug="x", query="number_of_orders >= 2", user=user)
    segment_update(segment=segment, query="number_of_orders>=2", user=user)  # same rule: no new version
    segment_update(segment=segment, query="number_of_orders >= 3", name="Loyal", user=user)
    versions = list(segment.versions.order_by("number").values_list("number", "query", "created_by__username"))
    assert versions == [(1, "number_of_orders >= 2", "hanako"), (2, "number_of_orders >= 3", "hanako")]
    segment.refresh_from_db()
    assert (segment.name, segment.query) == ("Loyal", "number_of_orders >= 3")


def test_duplicate_copies_the_rule_under_a_free_slug(store):
    segment = segment_create(store=store, name="VIP", slug="vip", query="amount_spent >= 50000")
    first, second = segment_duplicate(segment=segment), segment_duplicate(segment=segment)
    assert (first.slug, second.slug) == ("vip-copy", "vip-copy-2")
    assert first.rule == segment.rule


def test_recompute_of_given_customers_only_touches_them(store):
    a, b = CustomerFactory(store=store), CustomerFactory(store=store)
    segment = segment_create(store=store, name="buyers", slug="buyers", query="number_of_orders >= 1")
    segment_recompute(segment=segment)
    assert members(segment) == set()
    buy(a), buy(b)
    changes = customers_segments_recompute(store=store, customer_ids=[a.pk])
    assert changes == {"buyers": (1, 0)}
    assert members(segment) == {a.pk}  # b changed too, but was not asked for
    segment.refresh_from_db()
    assert segment.member_count == 1


def test_recompute_as_of_a_past_day_dates_the_events_with_that_day(store):
    a = CustomerFactory(store=store)
    buy(a, days_ago=10)
    segment = segment_create(store=store, name="buyers", slug="buyers", query="number_of_orders >= 1")
    day = store_today(store) - dt.timedelta(days=20)
    assert segment_recompute(segment=segment, as_of=day).members == 0
    result = segment_recompute(segment=segment, as_of=day + dt.timedelta(days=15))
    assert (result.members, result.joined) == (1, 1)
    assert events(segment) == [(a.pk, "joined", day + dt.timedelta(days=15))]


def test_preview_and_explain(store):
    a, b = CustomerFactory(store=store), CustomerFactory(store=store)
    buy(a, total=6000), buy(a, days_ago=200)
    tree = parse("number_of_orders >= 2 AND last_order_date > -30d OR amount_spent >= 100000")
    preview = segment_preview(store=store, tree=tree)
    assert (preview.count, [c.pk for c in preview.sample]) == (1, [a.pk])
    assert preview.query == "number_of_orders >= 2 AND last_order_date > -30d OR amount_spent >= 100000"

    explanation = segment_explain(store=store, tree=tree, customer=b)
    assert explanation.matched is False
    assert [(line.condition, line.matched, line.actual) for line in explanation.lines] == [
        ("number_of_orders >= 2", False, 0),
        ("last_order_date > -30d", False, None),
        ("amount_spent >= 100000", False, Decimal("0.00")),
    ]
    assert segment_explain(store=store, tree=tree, customer=a).matched is True


def test_a_preview_counts_every_member_shows_the_latest_buyers_and_evaluates_the_rule_once(store):
    buyers = [CustomerFactory(store=store) for _ in range(5)]
    for days_ago, customer in enumerate(buyers):
        buy(customer, days_ago=days_ago), buy(customer, days_ago=days_ago + 40)
    buy(CustomerFactory(store=store))  # one order: not a member
    tree = parse("orders_placed MATCHES (date > -1y, count >= 2)")
    with CaptureQueriesContext(connection) as queries:
        preview = segment_preview(store=store, tree=tree, sample_size=3)
    assert (preview.count, [c.pk for c in preview.sample]) == (5, [c.pk for c in buyers[:3]])
    # The count and the sample come from one evaluation of the rule (its orders subquery); the sample's
    # rows are then read by primary key.
    assert sum('"commerce_order"' in query["sql"] for query in queries.captured_queries) == 1
    assert segment_preview(store=store, tree=tree, sample_size=0).count == 5

    nobody = segment_preview(store=store, tree=parse("orders_placed MATCHES (date > -1y, count >= 3)"))
    assert (nobody.count, nobody.sample) == (0, [])


def test_deleting_a_stores_data_empties_its_segments(store):
    from ecpower.commerce.services import store_data_delete

    buy(CustomerFactory(store=store))
    segment = segment_create(store=store, name="buyers", slug="buyers", query="number_of_orders >= 1")
    segment_recompute(segment=segment)
    store_data_delete(store=store)
    segment.refresh_from_db()
    assert (segment.status, segment.member_count) == (SegmentStatus.NEW, 0)
    assert not Membership.objects.filter(segment=segment).exists()
    assert not MembershipEvent.objects.filter(segment=segment).exists()


def test_deleting_a_customer_deletes_its_memberships_and_history_and_nobody_elses(store):
    other_store = StoreFactory(shopify_domain="other.myshopify.com")
    a, b, elsewhere = CustomerFactory(store=store), CustomerFactory(store=store), CustomerFactory(store=other_store)
    for customer in (a, b, elsewhere):
        buy(customer)
    ours = segment_create(store=store, name="buyers", slug="buyers", query="number_of_orders >= 1")
    theirs = segment_create(store=other_store, name="buyers", slug="buyers", query="number_of_orders >= 1")
    segment_recompute(segment=ours), segment_recompute(segment=theirs)
    assert [m.segment for m in customer_memberships(a)] == [ours]
    SnapshotMember.objects.bulk_create([SnapshotMember(store=c.store, segment=s, customer=c)
                                        for c, s in ((a, ours), (b, ours), (elsewhere, theirs))])

    a.delete()
    assert members(ours) == {b.pk} and members(theirs) == {elsewhere.pk}
    assert set(SnapshotMember.objects.values_list("customer_id", flat=True)) == {b.pk, elsewhere.pk}
    assert events(ours) == [(b.pk, "joined", store_today(store))]
    assert events(theirs) == [(elsewhere.pk, "joined", store_today(other_store))]


def test_an_incremental_update_evaluates_every_segment_in_one_statement(store):
    a, b = CustomerFactory(store=store), CustomerFactory(store=store)
    vip = Segment.objects.create(store=store, name="VIP", slug="vip", kind=SegmentKind.LIST)
    Membership.objects.create(store=store, segment=vip, customer=b, since=store_today(store))
    queries = {"buyers": "number_of_orders >= 1", "big": "amount_spent >= 3000",
               # A condition segment's rule is compiled inline; a list is read as stored.
               "buyers-not-big": "in_segment('buyers') AND NOT in_segment('big')",
               "vip-buyers": "in_segment('vip') AND in_segment('buyers')"}
    segments = {slug: segment_create(store=store, name=slug, slug=slug, query=q) for slug, q in queries.items()}
    store_segments_recompute(store=store)
    buy(a), buy(b, total=5000)

    with CaptureQueriesContext(connection) as run:
        changes = customers_segments_recompute(store=store, customer_ids=[a.pk, b.pk])

    # The customers are read once for the four rules, not once per rule.
    assert len([q for q in run.captured_queries if 'AS "v0"' in q["sql"]]) == 1
    assert changes == {"buyers": (2, 0), "big": (1, 0), "buyers-not-big": (1, 0), "vip-buyers": (1, 0)}
    assert {slug: members(s) for slug, s in segments.items()} == {
        "buyers": {a.pk, b.pk}, "big": {b.pk}, "buyers-not-big": {a.pk}, "vip-buyers": {b.pk}}
    assert events(segments["vip-buyers"]) == [(b.pk, "joined", store_today(store))]
    full = store_segments_recompute(store=store)
    assert not full.failed and not [r.slug for r in full.results if r.joined or r.left]


def test_segments_recomputed_together_record_each_result_and_a_broken_rule_alone(store):
    a, b = CustomerFactory(store=store), CustomerFactory(store=store)
    buy(a, total=800), buy(b, total=800)
    buyers = segment_create(store=store, name="buyers", slug="buyers", query="number_of_orders >= 1")
    big = segment_create(store=store, name="big", slug="big", query="amount_spent >= 500")
    segment_recompute(segment=big)
    buy(b, total=5000)

    results = segments_recompute_together([buyers, big], scope=f"SELECT id FROM commerce_customer WHERE id = {a.pk}")

    # Only a was evaluated; each segment records its own result, and its members are counted.
    assert [(r.slug, r.members, r.joined, r.left) for r in results] == [("buyers", 1, 1, 0), ("big", 2, 0, 0)]
    assert (members(buyers), members(big)) == ({a.pk}, {a.pk, b.pk})
    assert {s.slug: (s.status, s.member_count, s.last_joined) for s in Segment.objects.filter(store=store)} == {
        "buyers": (SegmentStatus.SUCCEEDED, 1, 1), "big": (SegmentStatus.SUCCEEDED, 2, 0)}

    broken = segment_create(store=store, name="broken", slug="broken", query="number_of_orders >= 2")
    Segment.objects.filter(pk=broken.pk).update(rule={"field": "no_such_field", "op": ">=", "value": 1})
    buy(a)
    results = segments_recompute_together([Segment.objects.get(pk=broken.pk), buyers],
                                          scope=f"SELECT id FROM commerce_customer WHERE id = {b.pk}")
    assert "no_such_field" in results[0] and (results[1].members, results[1].joined) == (2, 1)
    assert Segment.objects.get(pk=broken.pk).status == SegmentStatus.FAILED
    assert members(buyers) == {a.pk, b.pk}


@pytest.mark.django_db(transaction=True)
def test_many_customers_recompute_side_by_side_and_equal_a_full_recompute(settings, monkeypatch):
    import segments.services

    monkeypatch.setattr(segments.services, "SCOPED_SIDE_BY_SIDE_MIN", 2)  # side by side on PostgreSQL
    store = StoreFactory(shopify_domain="many.myshopify.com")
    people = [CustomerFactory(store=store) for _ in range(6)]
    queries = {"buyers": "number_of_orders >= 1", "repeaters": "number_of_orders >= 2",
               "big": "amount_spent >= 3000", "quiet": "number_of_orders = 0",
               # In a later wave: evaluated once "buyers" holds the new members.
               "buyers-not-big": "in_segment('buyers') AND NOT in_segment('big')"}
    segments = {slug: segment_create(store=store, name=slug, slug=slug, query=q) for slug, q in queries.items()}
    store_segments_recompute(store=store)
    buy(people[0]), buy(people[1]), buy(people[1]), buy(people[2], total=5000)
    touched = [p.pk for p in people[:4]]

    changes = customers_segments_recompute(store=store, customer_ids=touched)

    assert members(segments["buyers-not-big"]) == {people[0].pk, people[1].pk}
    assert changes == {"buyers": (3, 0), "repeaters": (1, 0), "big": (1, 0), "quiet": (0, 3),
                       "buyers-not-big": (2, 0)}
    # Counts moved by the joins and leaves, not counted again: what the admin and the API show.
    assert {slug: Segment.objects.get(pk=s.pk).member_count for slug, s in segments.items()} == {
        slug: len(members(s)) for slug, s in segments.items()} == {
        "buyers": 3, "repeaters": 1, "big": 1, "quiet": 3, "buyers-not-big": 2}
    full = store_segments_recompute(store=store)
    assert not full.failed and not [r.slug for r in full.results if r.joined or r.left]
    assert {slug: Segment.objects.get(pk=s.pk).member_count for slug, s in segments.items()} == {
        "buyers": 3, "repeaters": 1, "big": 1, "quiet": 3, "buyers-not-big": 2}


@pytest.mark.django_db(transaction=True)
def test_a_failing_segment_side_by_side_raises_and_the_others_still_apply(monkeypatch):
    import segments.services

    monkeypatch.setattr(segments.services, "SCOPED_SIDE_BY_SIDE_MIN", 1)
    store = StoreFactory(shopify_domain="fails.myshopify.com")
    a = CustomerFactory(store=store)
    buyers = segment_create(store=store, name="buyers", slug="buyers", query="number_of_orders >= 1")
    broken = segment_create(store=store, name="broken", slug="broken", query="number_of_orders >= 2")
    Segment.objects.filter(pk=broken.pk).update(rule={"field": "no_such_field", "op": ">=", "value": 1})
    buy(a)

    with pytest.raises(ValueError, match="no_such_field"):
        customers_segments_recompute(store=store, customer_ids=[a.pk])
    # Side by side each segment is its own transaction; one after another (SQLite) they share one.
    assert members(buyers) == ({a.pk} if connection.vendor == "postgresql" else set())
