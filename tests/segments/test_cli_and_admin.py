"""`manage.py segments` and the admin pages around the builder (the live behaviour is in tests/e2e)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from ecpower.commerce.services import customer_facts_refresh
from segments.models import ConditionSegment, MembershipEvent, Segment, SegmentStatus
from tests.factories import CustomerFactory, OrderFactory, ProductFactory, StoreFactory


@pytest.fixture
def shop(db):
    store = StoreFactory(shopify_domain="tea.myshopify.com")
    loyal = CustomerFactory(store=store, email="loyal@example.jp", first_name="花子", last_name="山田")
    once = CustomerFactory(store=store, email="once@example.jp")
    CustomerFactory(store=store, email="never@example.jp")
    for day in range(1, 6):
        OrderFactory(store=store, customer=loyal, created_at=dt.datetime(2025, 1, day, 12, tzinfo=dt.UTC))
    OrderFactory(store=store, customer=once, created_at=dt.datetime(2025, 2, 1, 12, tzinfo=dt.UTC))
    ProductFactory(store=store, product_type="緑茶")
    customer_facts_refresh(store=store)
    return store, loyal, once


def run(*args) -> str:
    out = io.StringIO()
    call_command("segments", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_cli_create_preview_update_recompute_members(shop):
    store, loyal, once = shop
    d = ["--store", store.shopify_domain]
    assert run("preview", *d, "--query", "number_of_orders >= 1").strip() == "2"
    assert "created repeaters: 1 members" in run("create", *d, "--slug", "repeaters", "--name", "Repeaters",
                                                 "--query", "number_of_orders >= 2")
    assert "+1 −0" in run("update", *d, "--slug", "repeaters", "--query", "number_of_orders >= 1")
    assert "repeaters" in run("recompute", *d, "--slug", "repeaters", "--as-of", "2025-01-02")

    rows = list(csv.reader(io.StringIO(run("members", *d, "--slug", "repeaters", "--format", "csv"))))
    assert rows[0][:4] == ["shopify_id", "email", "first_name", "last_name"]
    # As of 2025-01-02 only the loyal customer had ordered.
    assert [r[1] for r in rows[1:]] == ["loyal@example.jp"]
    assert rows[1][2:4] == ["花子", "山田"]


def test_cli_bad_query_exits_non_zero_with_the_located_problem(shop):
    store, *_ = shop
    err = io.StringIO()
    with pytest.raises(CommandError, match="not valid"):
        call_command("segments", "preview", "--store", store.shopify_domain, "--query", "number_of_orders >=",
                     stderr=err)
    assert "line 1, column 20" in err.getvalue()


def test_cli_templates_adds_each_template_once(shop):
    store, *_ = shop
    first = run("templates", "--store", store.shopify_domain)
    assert "added loyal" in first and "fans-type-1" in first
    assert Segment.objects.get(store=store, slug="loyal").member_count == 1
    assert "already there" in run("templates", "--store", store.shopify_domain)


def test_admin_preview_returns_count_or_located_problems(shop, staff_client):
    store, *_ = shop
    url = reverse("admin:segments_conditionsegment_preview")
    ok = staff_client.post(url, {"store": store.pk, "query": "number_of_orders >= 1"}).json()
    assert (ok["ok"], ok["count"], ok["query"]) == (True, 2, "number_of_orders >= 1")
    assert ok["tree"] == {"field": "number_of_orders", "op": ">=", "value": 1}
    bad = staff_client.post(url, {"store": store.pk, "query": "number_of_orders >= 1 AND"}).json()
    assert bad["ok"] is False and bad["problems"][0]["column"] == 26
    from_json = staff_client.post(url, {"store": store.pk, "rule": json.dumps({"field": "x"})}).json()
    assert from_json["problems"][0]["path"] == "field"


def test_admin_create_members_explain_recompute_duplicate(shop, staff_client):
    store, loyal, once = shop
    response = staff_client.post(reverse("admin:segments_conditionsegment_add"), {
        "store": store.pk, "name": "Loyal", "slug": "loyal", "description": "", "query": "number_of_orders >= 5",
        "shopify_tag": "ecp-loyal",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    segment = ConditionSegment.objects.get(slug="loyal")
    assert (segment.status, segment.member_count) == (SegmentStatus.SUCCEEDED, 1)

    members = staff_client.get(reverse("admin:segments_conditionsegment_members", args=[segment.pk]), {"q": "loyal@"})
    assert "loyal@example.jp" in members.content.decode()
    explain = staff_client.get(reverse("admin:segments_conditionsegment_explain", args=[segment.pk, once.pk]))
    assert "number_of_orders &gt;= 5" in explain.content.decode()

    bad = staff_client.post(reverse("admin:segments_conditionsegment_change", args=[segment.pk]), {
        "name": "Loyal", "description": "", "query": "number_of_orders >>", "shopify_tag": "",
    })
    assert bad.status_code == 200 and "line 1, column 19" in bad.content.decode()

    staff_client.post(reverse("admin:segments_conditionsegment_change", args=[segment.pk]), {
        "name": "Loyal", "description": "", "query": "number_of_orders >= 1", "shopify_tag": "",
    })
    segment.refresh_from_db()
    assert (segment.member_count, segment.versions.count()) == (2, 2)
    assert MembershipEvent.objects.filter(segment=segment, kind="joined").count() == 2

    staff_client.post(reverse("admin:segments_conditionsegment_changelist"),
                      {"action": "duplicate_selected", "_selected_action": [segment.pk]})
    assert ConditionSegment.objects.get(slug="loyal-copy").member_count == 2
    page = staff_client.get(reverse("admin:segments_conditionsegment_change", args=[segment.pk])).content.decode()
    assert "v2" in page and "number_of_orders &gt;= 1" in page


def test_admin_templates_page_adds_checked_templates(shop, staff_client):
    store, *_ = shop
    url = reverse("admin:segments_conditionsegment_templates")
    assert "first-time-buyers" in staff_client.get(url, {"store": store.pk}).content.decode()
    staff_client.post(url, {"store": store.pk, "template": ["loyal", "prospects"]})
    assert set(Segment.objects.filter(store=store).values_list("slug", flat=True)) == {"loyal", "prospects"}


def test_admin_refuses_to_delete_a_segment_another_one_uses(shop, staff_client):
    from segments.services import segment_create

    store, *_ = shop
    base = segment_create(store=store, name="Buyers", slug="buyers", query="number_of_orders >= 1")
    segment_create(store=store, name="Loyal buyers", slug="loyal-buyers", query="in_segment('buyers')")
    response = staff_client.post(reverse("admin:segments_conditionsegment_delete", args=[base.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert Segment.objects.filter(pk=base.pk).exists()
    staff_client.post(reverse("admin:segments_conditionsegment_changelist"),
                      {"action": "delete_selected", "_selected_action": [base.pk], "post": "yes"})
    assert Segment.objects.filter(pk=base.pk).exists()


def test_a_segments_members_page_shows_the_kept_count_without_counting_and_a_search_counts(shop, staff_client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from segments.services import segment_create, segment_recompute

    store, loyal, once = shop
    segment = segment_create(store=store, name="buyers", query="number_of_orders >= 1")
    segment_recompute(segment=segment)
    segment.refresh_from_db()
    url = reverse("admin:segments_conditionsegment_members", args=[segment.pk])
    with CaptureQueriesContext(connection) as queries:
        page = staff_client.get(url)
    assert page.context["page"].paginator.count == segment.member_count == 2
    assert not [q for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert staff_client.get(url, {"q": "loyal@"}).context["page"].paginator.count == 1


def test_a_segments_recent_changes_are_its_newest_events_first(shop):
    from segments.selectors import segment_recent_events
    from segments.services import segment_create, segment_recompute

    store, loyal, once = shop
    segment = segment_create(store=store, name="buyers", query="number_of_orders >= 1")
    segment_recompute(segment=segment)
    first = list(MembershipEvent.objects.filter(segment=segment).order_by("id"))
    later = MembershipEvent.objects.create(store=store, segment=segment, customer=once, kind="left",
                                           date=first[0].date + dt.timedelta(days=1))
    same_day = MembershipEvent.objects.create(store=store, segment=segment, customer=loyal, kind="left",
                                              date=first[0].date)
    assert list(segment_recent_events(segment, 3)) == [later, same_day, first[-1]]
