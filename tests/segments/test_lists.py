"""List segments: made from a query, a snapshot, a set expression or a CSV file; holdouts; frozen."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.test import override_settings

from ecpower.commerce.models import Customer
from ecpower.commerce.services import customer_facts_refresh
from ecpower.commerce.shopify_csv import CsvFileError
from segments import set_expressions
from segments.lists import (
    holdout_size,
    list_create_from_csv,
    list_create_from_expression,
    list_create_from_query,
    list_create_from_segment,
)
from segments.models import ListOrigin, Membership, MembershipEvent, Segment, SegmentKind, SegmentStatus
from segments.rules import InvalidRule
from segments.selectors import segment_targets, store_today
from segments.services import segment_create, segment_recompute, segment_update, store_segments_recompute
from tests.factories import CustomerFactory, OrderFactory, StoreFactory


def members(segment) -> set[int]:
    return set(Membership.objects.filter(segment=segment).values_list("customer_id", flat=True))


def buy(customer, when=dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC)):
    OrderFactory(store=customer.store, customer=customer, created_at=when)
    customer_facts_refresh(store=customer.store, customer_ids=[customer.pk])


@pytest.fixture
def shop(db):
    """Six customers; condition segments a = {0,1,2}, b = {2,3}, c = {3,4}, empty = {} (computed)."""
    store = StoreFactory(shopify_domain="tea.myshopify.com", name="茶舗")
    people = [CustomerFactory(store=store, email=f"p{i}@example.jp") for i in range(6)]
    for i, tag_sets in enumerate([["a"], ["a"], ["a", "b"], ["b", "c"], ["c"], []]):
        for tag in tag_sets:
            people[i].tags.create(store=store, name=tag)
    for slug in ("a", "b", "c"):
        segment_recompute(segment=segment_create(store=store, name=slug.upper(), slug=slug,
                                                 query=f"customer_tags CONTAINS '{slug}'"))
    segment_recompute(segment=segment_create(store=store, name="Empty", slug="empty",
                                             query="customer_tags CONTAINS 'nobody-has-this'"))
    return store, [p.pk for p in people]


# --- from a query --------------------------------------------------------------------------------


def test_a_list_from_a_query_is_frozen_when_the_customers_change(shop):
    store, ids = shop
    buy(Customer.objects.get(pk=ids[0]))
    made = list_create_from_query(store=store, name="Buyers", slug="buyers", query="number_of_orders >= 1")
    assert made.kind == SegmentKind.LIST and made.list_origin == ListOrigin.QUERY
    assert members(made) == {ids[0]} and made.member_count == 1 and made.status == SegmentStatus.SUCCEEDED
    assert made.query == "number_of_orders >= 1" and made.as_of == store_today(store)
    assert list(MembershipEvent.objects.filter(segment=made).values_list("customer_id", "kind")) == [
        (ids[0], "joined")]

    buy(Customer.objects.get(pk=ids[1]))
    store_segments_recompute(store=store)  # condition segments only
    assert members(made) == {ids[0]}


def test_a_list_from_a_query_as_of_a_past_day(shop):
    store, ids = shop
    buy(Customer.objects.get(pk=ids[0]), dt.datetime(2025, 1, 10, 3, tzinfo=dt.UTC))
    buy(Customer.objects.get(pk=ids[1]), dt.datetime(2025, 6, 10, 3, tzinfo=dt.UTC))
    made = list_create_from_query(store=store, name="Early", query="number_of_orders >= 1",
                                  as_of=dt.date(2025, 2, 1))
    assert made.slug == "early" and made.as_of == dt.date(2025, 2, 1)
    assert members(made) == {ids[0]}


def test_a_list_keeps_its_members_when_its_source_segment_changes(shop):
    store, ids = shop
    snapshot = list_create_from_segment(source=Segment.objects.get(store=store, slug="a"), name="A then",
                                        slug="a-then")
    assert snapshot.list_origin == ListOrigin.SNAPSHOT and snapshot.expression == "a"
    assert list(snapshot.source_segments.values_list("slug", flat=True)) == ["a"]
    assert members(snapshot) == set(ids[0:3])

    source = segment_update(segment=Segment.objects.get(store=store, slug="a"), query="customer_tags CONTAINS 'c'")
    segment_recompute(segment=source)
    assert members(source) == {ids[3], ids[4]}
    assert members(snapshot) == set(ids[0:3])
    assert Segment.objects.get(pk=snapshot.pk).member_count == 3


def test_a_list_cannot_be_recomputed_or_given_a_query(shop):
    store, _ids = shop
    made = list_create_from_expression(store=store, name="AB", expression="a | b")
    with pytest.raises(ValueError):
        segment_recompute(segment=made)
    with pytest.raises(InvalidRule, match="fixed"):
        segment_update(segment=made, query="number_of_orders >= 1")
    segment_update(segment=made, name="A or B")
    assert Segment.objects.get(pk=made.pk).name == "A or B"


def test_a_snapshot_of_a_segment_never_computed_is_refused(shop):
    store, _ids = shop
    fresh = segment_create(store=store, name="Fresh", slug="fresh", query="number_of_orders >= 1")
    with pytest.raises(InvalidRule, match="fresh"):
        list_create_from_segment(source=fresh, name="Fresh list")
    assert not Segment.objects.filter(kind=SegmentKind.LIST).exists()


def test_a_slug_already_taken_is_refused_and_nothing_is_made(shop):
    store, _ids = shop
    with pytest.raises(InvalidRule, match="already exists"):
        list_create_from_expression(store=store, name="A", slug="a", expression="b")
    assert Segment.objects.filter(store=store).count() == 4


# --- set expressions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("a | b", {0, 1, 2, 3}),
        ("a & b", {2}),
        ("a - b", {0, 1}),
        ("a | b | c", {0, 1, 2, 3, 4}),
        ("a ∪ b ∩ c", {0, 1, 2, 3}),  # ∩ binds tighter: a ∪ {3}
        ("(a | b) & c", {3}),
        ("a | b - c", {0, 1, 2}),  # left to right: (a | b) - c
        ("a - (b - c)", {0, 1}),
        ("a - b - c", {0, 1}),
        ("a & b & c", set()),
        ("a | a", {0, 1, 2}),
        ("a & a", {0, 1, 2}),
        ("a - a", set()),
        ("a | empty", {0, 1, 2}),
        ("a & empty", set()),
        ("a - empty", {0, 1, 2}),
        ("empty - a", set()),
    ],
)
def test_set_operations(shop, expression, expected):
    store, ids = shop
    made = list_create_from_expression(store=store, name=expression, slug="combined", expression=expression)
    assert members(made) == {ids[i] for i in expected}
    assert made.member_count == len(expected)
    assert set_expressions.parse(made.expression) == set_expressions.parse(expression)


def test_an_expression_can_combine_lists_and_segments(shop):
    store, ids = shop
    frozen = list_create_from_expression(store=store, name="A and B", slug="line-linked", expression="a|b")
    made = list_create_from_expression(store=store, name="Targets", slug="targets",
                                       expression="(line-linked - c) | empty")
    assert made.expression == "(line-linked - c) | empty"
    assert sorted(made.source_segments.values_list("slug", flat=True)) == ["c", "empty", "line-linked"]
    assert members(made) == {ids[0], ids[1], ids[2]}
    assert frozen.member_count == 4


@pytest.mark.parametrize(
    ("expression", "line", "column", "message"),
    [
        ("a | nope", 1, 5, "no segment 'nope'"),
        ("a |", 1, 4, "ends too early"),
        ("(a | b", 1, 7, "ends too early"),
        ("a b", 1, 3, "Unexpected"),
        ("", 1, 1, "empty"),
    ],
)
def test_a_bad_expression_is_located_and_nothing_is_made(shop, expression, line, column, message):
    store, _ids = shop
    with pytest.raises(InvalidRule) as caught:
        list_create_from_expression(store=store, name="Bad", expression=expression)
    problem = caught.value.problems[0]
    assert (problem.line, problem.column) == (line, column)
    assert message in problem.message
    assert not Segment.objects.filter(kind=SegmentKind.LIST).exists()


# --- CSV ------------------------------------------------------------------------------------------


@pytest.fixture
def customers(db):
    store = StoreFactory(shopify_domain="csv.myshopify.com", name="茶舗")
    people = [CustomerFactory(store=store, email=f"Hanako{i}@Example.jp", shopify_id=7_000_000_000_000 + i)
              for i in range(5)]
    other_store = StoreFactory(shopify_domain="other.myshopify.com")
    CustomerFactory(store=other_store, email="stranger@example.jp", shopify_id=7_000_000_000_099)
    return store, people


def make_from_csv(store, text_or_bytes, encoding="utf-8", **kwargs):
    data = text_or_bytes if isinstance(text_or_bytes, bytes) else text_or_bytes.encode(encoding)
    return list_create_from_csv(store=store, name="Upload", slug=kwargs.pop("slug", "upload"), data=data,
                                file_name="list.csv", **kwargs)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp932"])
def test_csv_with_a_japanese_header_in_each_encoding(customers, encoding):
    store, people = customers
    text = "氏名,メールアドレス\r\n山田花子,hanako0@example.jp\r\n佐藤,HANAKO1@EXAMPLE.JP\r\n"
    made = make_from_csv(store, text, encoding)
    assert members(made) == {people[0].pk, people[1].pk}
    upload = made.upload
    assert upload.encoding == encoding and upload.column == "メールアドレス" and upload.has_header
    assert (upload.rows, upload.matched, upload.unmatched, upload.duplicates) == (2, 2, [], [])
    assert made.list_origin == ListOrigin.CSV


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp932"])
def test_csv_without_a_header_in_each_encoding(customers, encoding):
    store, people = customers
    made = make_from_csv(store, "山田花子,hanako0@example.jp\r\n髙橋,hanako4@example.jp\r\n", encoding)
    assert members(made) == {people[0].pk, people[4].pk}
    assert (made.upload.encoding, made.upload.has_header, made.upload.column, made.upload.rows) == (
        encoding, False, "column 2", 2)


def test_csv_without_a_header_of_ids_gids_and_guarded_ids(customers):
    store, people = customers
    text = "7000000000000\n\n'7000000000001\ngid://shopify/Customer/7000000000002\n"
    made = make_from_csv(store, text)
    assert members(made) == {people[0].pk, people[1].pk, people[2].pk}
    assert (made.upload.has_header, made.upload.column, made.upload.blank_rows) == (False, "column 1", 1)


def test_csv_report_lists_unmatched_and_duplicate_rows_with_their_lines(customers):
    store, people = customers
    text = "\n".join([
        "email",                                   # line 1
        "hanako0@example.jp",                      # 2 matched
        "nobody@example.jp",                       # 3 unknown email
        "stranger@example.jp",                     # 4 another store's customer
        "HANAKO0@example.jp",                      # 5 duplicate of 2
        "",                                        # 6 blank
        "7000000000000",                           # 7 same customer as 2, by id
        "7.00E+12",                                # 8 Excel-mangled
        "gid://shopify/Order/1",                   # 9 not a customer
        "not an id",                               # 10
        "nobody@example.jp",                       # 11 duplicate of an unmatched value
        "hanako3@example.jp",                      # 12 matched
    ]) + "\n"
    made = make_from_csv(store, text)
    assert members(made) == {people[0].pk, people[3].pk}
    upload = made.upload
    assert upload.rows == 10 and upload.blank_rows == 1 and upload.matched == 2
    assert [row[0] for row in upload.unmatched] == [3, 4, 8, 9, 10]
    assert "Excel" in upload.unmatched[2][2] and "Order" in upload.unmatched[3][2]
    assert upload.duplicates == [[5, "HANAKO0@example.jp", 2], [7, "7000000000000", 2], [11, "nobody@example.jp", 3]]


def test_csv_column_chosen_by_name_or_number_and_detected_among_several(customers):
    store, people = customers
    text = "名前\tメモ\t顧客ID\n山田\tgift\t7000000000004\n"
    assert members(make_from_csv(store, text, slug="detected")) == {people[4].pk}  # tab-separated, 顧客ID
    two_columns = "id,email\n7000000000001,hanako2@example.jp\n"
    assert members(make_from_csv(store, two_columns, slug="by-name", column="email")) == {people[2].pk}
    assert members(make_from_csv(store, two_columns, slug="by-number", column="1")) == {people[1].pk}
    unnamed = "山田,hanako3@example.jp\n佐藤,hanako4@example.jp\n"
    made = make_from_csv(store, unnamed, slug="by-values")
    assert members(made) == {people[3].pk, people[4].pk} and made.upload.column == "column 2"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\n\n", "empty"),
        ("name,note\n山田,gift\n佐藤,\n".encode(), "No column of email addresses"),
        (b"email\n\x85\x40\xff\n", "neither UTF-8 nor Shift_JIS"),
        (b"\xef\xbb\xbfemail\n\xff\n", "not valid UTF-8"),
        (b"email\nnobody@example.jp\nstranger@example.jp\n", "None of the 2 rows matched"),
    ],
)
def test_unreadable_or_unmatched_csv_is_refused_and_nothing_is_made(customers, data, message):
    store, _people = customers
    with pytest.raises(CsvFileError, match=message):
        make_from_csv(store, data)
    assert not Segment.objects.filter(kind=SegmentKind.LIST).exists()


def test_csv_column_that_does_not_exist_is_refused(customers):
    store, _people = customers
    with pytest.raises(CsvFileError, match="no column named 'mail address'"):
        make_from_csv(store, "email\nhanako0@example.jp\n", column="mail address")
    with pytest.raises(CsvFileError, match="no column 3"):
        make_from_csv(store, "email\nhanako0@example.jp\n", column="3")
    assert not Segment.objects.filter(kind=SegmentKind.LIST).exists()


@override_settings(LIST_CSV_MAX_UPLOAD_BYTES=100)
def test_csv_over_the_size_limit_is_refused(customers):
    store, _people = customers
    with pytest.raises(CsvFileError, match="the limit is 0.0 MB"):
        make_from_csv(store, "email\n" + "hanako0@example.jp\n" * 10)
    assert not Segment.objects.filter(kind=SegmentKind.LIST).exists()


# --- holdout --------------------------------------------------------------------------------------


@pytest.fixture
def crowd(db):
    store = StoreFactory(shopify_domain="crowd.myshopify.com")
    people = CustomerFactory.create_batch(200, store=store)
    for person in people:
        person.tags.create(store=store, name="vip")
    segment_recompute(segment=segment_create(store=store, name="VIP", slug="vip", query="customer_tags CONTAINS 'vip'"))
    return store


def held(segment) -> set[int]:
    return set(Membership.objects.filter(segment=segment, holdout=True).values_list("customer_id", flat=True))


def test_holdout_takes_the_share_reproducibly_and_targets_skip_it(crowd):
    store = crowd
    first = list_create_from_expression(store=store, name="One", slug="one", expression="vip",
                                        holdout_percent="10", seed=42)
    again = list_create_from_expression(store=store, name="Two", slug="two", expression="vip",
                                        holdout_percent=Decimal("10"), seed=42)
    other = list_create_from_expression(store=store, name="Three", slug="three", expression="vip",
                                        holdout_percent=10, seed=43)
    assert (first.holdout_percent, first.holdout_seed, first.holdout_count) == (Decimal("10.00"), 42, 20)
    assert len(held(first)) == 20 and held(first) == held(again)
    assert held(other) != held(first) and len(held(other)) == 20
    assert set(segment_targets(first).values_list("id", flat=True)) == members(first) - held(first)
    assert first.member_count == 200


def test_holdout_seed_is_drawn_and_stored_when_not_given(crowd):
    made = list_create_from_query(store=crowd, name="Drawn", query="customer_tags CONTAINS 'vip'",
                                  holdout_percent="12.5")
    assert made.holdout_seed is not None and made.holdout_count == 25
    replay = list_create_from_query(store=crowd, name="Replay", query="customer_tags CONTAINS 'vip'",
                                    holdout_percent="12.5", seed=made.holdout_seed)
    assert held(replay) == held(made)


@pytest.mark.parametrize(("members_count", "share", "expected"),
                         [(15, "10", 2), (14, "10", 1), (0, "10", 0), (1, "50", 1), (3, "0.01", 0)])
def test_holdout_size_rounds_half_up(members_count, share, expected):
    assert holdout_size(members_count, Decimal(share)) == expected


@pytest.mark.parametrize("share", ["0", "100", "-5", "ten"])
def test_a_bad_holdout_share_is_refused_and_nothing_is_made(crowd, share):
    with pytest.raises(InvalidRule, match="holdout"):
        list_create_from_expression(store=crowd, name="Bad", expression="vip", holdout_percent=share)
    with pytest.raises(InvalidRule, match="holdout"):
        list_create_from_csv(store=crowd, name="Bad csv", data=b"not even read", file_name="x.csv",
                             holdout_percent=share)
    assert not Segment.objects.filter(kind=SegmentKind.LIST).exists()


def test_store_scoping_a_list_never_reads_another_stores_segments(shop):
    store, _ids = shop
    other = StoreFactory(shopify_domain="elsewhere.myshopify.com")
    CustomerFactory(store=other).tags.create(store=other, name="a")
    segment_recompute(segment=segment_create(store=other, name="A", slug="a", query="customer_tags CONTAINS 'a'"))
    mine = list_create_from_expression(store=store, name="Mine", expression="a")
    assert mine.member_count == 3
    with pytest.raises(InvalidRule, match="no segment 'b'"):
        list_create_from_expression(store=other, name="Theirs", expression="a | b")


def test_a_japanese_name_gets_a_dated_slug_each_one_free(shop):
    store, _ids = shop
    first = list_create_from_expression(store=store, name="春のキャンペーン", expression="a")
    second = list_create_from_expression(store=store, name="春のキャンペーン", expression="b")
    assert first.slug.startswith("list-") and len(first.slug) == len("list-20260101")
    assert second.slug == f"{first.slug}-2"
