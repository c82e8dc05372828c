"""Segments over the API: joins and leaves, versions, explain, CSV export; lists made four ways."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.test import APIClient

from ecpower.commerce.access import api_key_create
from ecpower.commerce.models import ApiKeyScope, CustomerTag
from ecpower.commerce.services import customer_facts_refresh
from segments.models import Segment
from segments.services import segment_create, segment_recompute, segment_update
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_throttle_cache():
    cache.clear()


@pytest.fixture
def shop():
    store = StoreFactory(shopify_domain="a.myshopify.com")
    vip = CustomerFactory(store=store, email="vip@example.jp", first_name="花子")
    other = CustomerFactory(store=store, email="other@example.jp")
    CustomerTag.objects.create(store=store, customer=vip, name="vip")
    OrderFactory(store=store, customer=vip)
    OrderFactory(store=store, customer=other)
    customer_facts_refresh(store=store)
    segment = segment_create(store=store, name="VIP", slug="vip", query="customer_tags CONTAINS 'vip'")
    segment_recompute(segment=segment)
    return store, segment, vip, other


def client_for(store, scope=ApiKeyScope.READ_WRITE) -> APIClient:
    _key, raw = api_key_create(store=store, name="tool", scope=scope)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_events_versions_and_explain(shop):
    store, segment, vip, other = shop
    segment = segment_update(segment=segment, query="customer_tags CONTAINS 'vip' OR number_of_orders >= 1")
    segment_recompute(segment=segment)
    client = client_for(store, ApiKeyScope.READ)
    events = client.get(reverse("segment-events", args=[segment.pk])).json()["results"]
    assert [(e["kind"], e["email"]) for e in events] == [("joined", "other@example.jp"), ("joined", "vip@example.jp")]
    assert client.get(reverse("segment-events", args=[segment.pk]), {"event": "left"}).json()["results"] == []
    versions = client.get(reverse("segment-versions", args=[segment.pk])).json()
    assert [v["number"] for v in versions] == [2, 1] and versions[1]["query"] == "customer_tags CONTAINS 'vip'"
    why = client.get(reverse("segment-explain", args=[segment.pk]), {"customer": other.pk}).json()
    assert why["matched"] is True and why["member"] is True
    assert [(line["condition"], line["matched"]) for line in why["lines"]] == [
        ("customer_tags CONTAINS 'vip'", False), ("number_of_orders >= 1", True)]
    assert why["lines"][0]["actual"] == []
    foreign = CustomerFactory(store=StoreFactory())
    assert client.get(reverse("segment-explain", args=[segment.pk]), {"customer": foreign.pk}).status_code == 404


def test_export_streams_the_members_as_csv(shop):
    store, segment, _vip, _other = shop
    client = client_for(store, ApiKeyScope.READ)
    response = client.get(reverse("segment-export", args=[segment.pk]), {"columns": "email,first_name",
                                                                        "encoding": "cp932"})
    assert response.status_code == 200 and response["Content-Type"] == "text/csv; charset=shift_jis"
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode("cp932"))))
    assert rows == [["email", "first_name"], ["vip@example.jp", "花子"]]
    bad = client.get(reverse("segment-export", args=[segment.pk]), {"columns": "password"}).json()["error"]
    assert bad["details"][0]["field"] == "columns"
    bad = client.get(reverse("segment-export", args=[segment.pk]), {"encoding": "latin-1"}).json()["error"]
    assert bad["details"][0]["field"] == "encoding"


def test_lists_from_a_query_a_snapshot_and_an_expression(shop):
    store, segment, _vip, _other = shop
    client = client_for(store)
    by_query = client.post(reverse("list-list"), {"store": store.pk, "name": "Buyers", "origin": "query",
                                                  "query": "number_of_orders >= 1", "holdout_percent": "50",
                                                  "seed": 7}, format="json")
    assert by_query.status_code == 201, by_query.json()
    body = by_query.json()
    assert (body["kind"], body["list_origin"], body["member_count"], body["holdout_count"]) == ("list", "query", 2, 1)
    snapshot = client.post(reverse("list-list"), {"store": store.pk, "name": "VIP frozen", "origin": "snapshot",
                                                  "source": segment.pk}, format="json").json()
    assert snapshot["member_count"] == 1 and snapshot["expression"] == "vip"
    combined = client.post(reverse("list-list"), {"store": store.pk, "name": "Not VIP", "origin": "expression",
                                                  "expression": f"{body['slug']} - vip"}, format="json").json()
    assert combined["member_count"] == 1
    located = client.post(reverse("list-list"), {"store": store.pk, "name": "x", "origin": "expression",
                                                 "expression": "vip | nope"}, format="json").json()["error"]
    assert located["code"] == "invalid_query" and located["details"][0]["column"] == 7
    missing = client.post(reverse("list-list"), {"store": store.pk, "name": "x", "origin": "snapshot"},
                          format="json").json()["error"]
    assert missing["details"][0]["field"] == "source"
    listed = client.get(reverse("list-list")).json()["results"]
    assert {row["name"] for row in listed} == {"Buyers", "VIP frozen", "Not VIP"}  # lists only


def test_a_list_from_a_csv_upload_reports_unmatched_rows(shop):
    store, _segment, _vip, _other = shop
    client = client_for(store)
    data = "email\nvip@example.jp\nnobody@example.jp\nVIP@example.jp\n".encode("cp932")
    response = client.post(reverse("list-list"), {
        "store": store.pk, "name": "アップロード", "origin": "csv",
        "file": SimpleUploadedFile("list.csv", data, content_type="text/csv")}, format="multipart")
    assert response.status_code == 201, response.json()
    upload = response.json()["upload"]
    assert (upload["rows"], upload["matched"], upload["column"]) == (3, 1, "email")
    assert upload["unmatched"][0][:2] == [3, "nobody@example.jp"] and upload["duplicates"][0][:2] == [4, "VIP@example.jp"]
    assert response.json()["slug"].startswith("list-")
    empty = client.post(reverse("list-list"), {"store": store.pk, "name": "x", "origin": "csv",
                                               "file": SimpleUploadedFile("e.csv", b"", content_type="text/csv")},
                        format="multipart").json()["error"]
    assert empty["details"][0]["field"] == "file" and "empty" in empty["details"][0]["message"]
    assert not Segment.objects.filter(name="x").exists()
    read_only = client_for(store, ApiKeyScope.READ).post(reverse("list-list"), {
        "store": store.pk, "name": "y", "origin": "query", "query": "number_of_orders >= 1"}, format="json")
    assert read_only.status_code == 403
