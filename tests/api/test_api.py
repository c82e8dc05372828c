"""REST API skeleton: keys, tenancy (a walk over the URL map), roles, errors, throttling, schema."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.urls import reverse
from rest_framework.test import APIClient

from ecpower.api.framework import ApiKeyRateThrottle
from ecpower.api.urls import router
from ecpower.commerce.access import api_key_create, api_key_revoke
from ecpower.commerce.models import ApiKeyScope, StoreMembership, StoreRole
from ecpower.commerce.services import customer_facts_refresh
from integrations.models import (
    ChannelTalkConnection,
    SyncJob,
    SyncJobKind,
    SyncJobStatus,
    TagMapping,
    WebhookEndpoint,
)
from integrations.outbound import webhook_endpoint_create
from metrics.models import Campaign, Journey, PipelineRun
from segments.lists import list_create_from_segment
from segments.models import Segment, SegmentKind
from segments.services import segment_create, segment_recompute
from tests.factories import CustomerFactory, OrderFactory, StoreFactory


@pytest.fixture(autouse=True)
def fresh_throttle_cache():
    cache.clear()


def make_store(domain: str):
    store = StoreFactory(shopify_domain=domain)
    customer = CustomerFactory(store=store)
    customer.tags.create(store=store, name="vip")
    OrderFactory(store=store, customer=customer)
    customer_facts_refresh(store=store)
    segment = segment_create(store=store, name="VIP", slug="vip", query="customer_tags CONTAINS 'vip'")
    segment_recompute(segment=segment)
    SyncJob.objects.create(store=store, kind=SyncJobKind.IMPORT_CHANGES, status=SyncJobStatus.SUCCEEDED)
    journey = Journey.objects.create(store=store, name="life")
    journey.stages.create(segment=segment, position=0)
    Campaign.objects.create(store=store, name="spring", starts_on="2025-03-01", ends_on="2025-03-31").segments.add(
        segment)
    PipelineRun.objects.create(store=store, date="2025-03-01")
    segment.refresh_from_db()
    list_create_from_segment(source=segment, name="VIP frozen", slug="vip-frozen")
    webhook_endpoint_create(store=store, name="tool", url="https://partner.example.jp/hook",
                            events=["sync_job.finished"])
    TagMapping.objects.create(store=store, attribute="loyalty_tier", kind="prefix", pattern="AIT-Tier-")
    ChannelTalkConnection.objects.create(store=store, access_key="k", access_secret="s").segments.add(segment)
    return store


@pytest.fixture
def stores(db):
    return make_store("a.myshopify.com"), make_store("b.myshopify.com")


def client_with(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def test_requests_without_a_valid_key_get_401_in_the_error_format(stores):
    a, _b = stores
    url = reverse("customer-list")
    response = APIClient().get(url)
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "not_authenticated"
    assert client_with("ecp_nope_nope").get(url).json()["error"]["message"] == "Unknown or revoked API key."
    key, raw = api_key_create(store=a, name="tool")
    assert client_with(raw).get(url).status_code == 200
    api_key_revoke(key=key)
    assert client_with(raw).get(url).status_code == 401
    assert key.key_hash not in raw and raw.startswith(f"ecp_{key.prefix}_")


def test_a_key_sees_only_its_store(stores):
    a, b = stores
    _key, raw = api_key_create(store=a, name="tool")
    client = client_with(raw)
    for name in ("store", "customer", "order", "segment", "sync-job", "journey", "campaign", "daily-run", "list",
                 "webhook-endpoint", "tag-mapping", "channel-talk"):
        body = client.get(reverse(f"{name}-list")).json()
        stores_seen = {row.get("store", row["id"] if name == "store" else None) for row in body["results"]}
        assert stores_seen == {a.pk}, name


def _object_of(basename: str, store):
    from ecpower.commerce.models import Customer, Order

    return {"store": store, "customer": Customer.objects.filter(store=store).first(),
            "order": Order.objects.filter(store=store).first(),
            "segment": Segment.objects.filter(store=store).first(),
            "list": Segment.objects.get(store=store, kind=SegmentKind.LIST),
            "sync-job": SyncJob.objects.filter(store=store).first(),
            "journey": Journey.objects.get(store=store), "campaign": Campaign.objects.get(store=store),
            "daily-run": PipelineRun.objects.get(store=store),
            "webhook-endpoint": WebhookEndpoint.objects.get(store=store),
            "tag-mapping": TagMapping.objects.get(store=store),
            "channel-talk": ChannelTalkConnection.objects.get(store=store)}[basename]


def test_tenancy_walk_every_detail_url_with_a_key_of_another_store(stores):
    """Every route that names an object, with every method: a key of store A never reaches B."""
    a, b = stores
    _key, raw = api_key_create(store=a, name="tool", scope=ApiKeyScope.READ_WRITE)
    client = client_with(raw)
    walked = 0
    for pattern in router.urls:
        if "pk" not in pattern.pattern.regex.groupindex or pattern.name.endswith("-format"):
            continue
        basename = next(b for b in ("sync-job", "store", "customer", "order", "segment", "journey", "campaign",
                                    "daily-run", "list", "webhook-endpoint", "tag-mapping", "channel-talk")
                        if pattern.name.startswith(b + "-"))
        url = reverse(pattern.name, kwargs={"pk": _object_of(basename, b).pk})
        for method in ("get", "post", "put", "patch", "delete"):
            response = getattr(client, method)(url, {}, format="json")
            assert response.status_code in (403, 404, 405), (url, method, response.status_code)
            if response.status_code != 405:
                walked += 1
                assert response.json()["error"]["code"] in ("not_found", "permission_denied")
    assert walked >= 30
    assert Segment.objects.filter(store=b).count() == 2
    assert Journey.objects.get(store=b).stages.count() == 1 and Campaign.objects.filter(store=b).count() == 1


def test_read_keys_read_and_preview_but_cannot_write(stores):
    a, _b = stores
    _key, raw = api_key_create(store=a, name="bi", scope=ApiKeyScope.READ)
    client = client_with(raw)
    preview = client.post(reverse("segment-preview"), {"store": a.pk, "query": "number_of_orders >= 1"},
                          format="json")
    assert preview.status_code == 200 and preview.json()["count"] == 1
    created = client.post(reverse("segment-list"), {"store": a.pk, "name": "Buyers", "query": "number_of_orders >= 1"},
                          format="json")
    assert created.status_code == 403 and created.json()["error"]["code"] == "permission_denied"
    assert not Segment.objects.filter(slug="buyers").exists()


def test_read_write_key_creates_a_segment_and_reads_members(stores, django_capture_on_commit_callbacks):
    a, _b = stores
    _key, raw = api_key_create(store=a, name="crm", scope=ApiKeyScope.READ_WRITE)
    client = client_with(raw)
    with django_capture_on_commit_callbacks(execute=True):
        created = client.post(reverse("segment-list"),
                              {"store": a.pk, "name": "Buyers", "query": "number_of_orders >= 1"}, format="json")
    assert created.status_code == 201, created.json()
    segment = Segment.objects.get(slug="buyers")
    assert segment.member_count == 1 and created.json()["query"] == "number_of_orders >= 1"
    members = client.get(reverse("segment-members", kwargs={"pk": segment.pk})).json()
    assert [m["email"] for m in members["results"]] == [segment.store.customers.get().email]
    assert members["next"] is None


def test_errors_carry_field_paths_and_query_positions(stores):
    a, b = stores
    _key, raw = api_key_create(store=a, name="crm", scope=ApiKeyScope.READ_WRITE)
    client = client_with(raw)
    missing = client.post(reverse("segment-list"), {"store": a.pk}, format="json").json()["error"]
    assert missing["code"] == "invalid" and {d["field"] for d in missing["details"]} >= {"name"}
    other_store = client.post(reverse("segment-list"), {"store": b.pk, "name": "X", "query": "number_of_orders >= 1"},
                              format="json").json()["error"]
    assert [d["field"] for d in other_store["details"]] == ["store"]
    bad_query = client.post(reverse("segment-preview"), {"store": a.pk, "query": "number_of_orders >="},
                            format="json")
    assert bad_query.status_code == 400
    error = bad_query.json()["error"]
    assert error["code"] == "invalid_query" and error["details"][0]["line"] == 1 and error["details"][0]["column"]
    taken = client.post(reverse("segment-list"), {"store": a.pk, "name": "V", "slug": "vip",
                                                  "query": "number_of_orders >= 1"}, format="json").json()["error"]
    assert taken["code"] == "invalid" and taken["details"][0]["field"] == "slug"


def test_staff_see_their_stores_and_viewers_cannot_write(stores, django_user_model):
    a, b = stores
    viewer = django_user_model.objects.create_user("viewer", "v@example.jp", "pw", is_staff=True)
    StoreMembership.objects.create(user=viewer, store=a, role=StoreRole.VIEWER)
    client = APIClient()
    client.force_login(viewer)
    assert [s["id"] for s in client.get(reverse("store-list")).json()["results"]] == [a.pk]
    assert client.get(reverse("store-detail", kwargs={"pk": b.pk})).status_code == 404
    assert client.patch(reverse("store-detail", kwargs={"pk": a.pk}), {"name": "x"}, format="json").status_code == 403
    StoreMembership.objects.filter(user=viewer).update(role=StoreRole.EDITOR)
    assert client.patch(reverse("store-detail", kwargs={"pk": a.pk}), {"name": "新"}, format="json").status_code == 200
    admin = django_user_model.objects.create_superuser("root", "r@example.jp", "pw")
    client.force_login(admin)
    assert len(client.get(reverse("store-list")).json()["results"]) == 2


def test_per_key_throttling_answers_429_with_retry_after(stores, monkeypatch):
    a, _b = stores
    monkeypatch.setattr(ApiKeyRateThrottle, "THROTTLE_RATES", {"api": "3/min"})
    _key, raw = api_key_create(store=a, name="busy")
    client = client_with(raw)
    codes = [client.get(reverse("store-list")).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    response = client.get(reverse("store-list"))
    assert int(response["Retry-After"]) > 0 and response.json()["error"]["code"] == "throttled"
    _other, other_raw = api_key_create(store=a, name="quiet")
    assert client_with(other_raw).get(reverse("store-list")).status_code == 200


def test_customer_filters_and_detail_with_segments(stores):
    a, _b = stores
    _key, raw = api_key_create(store=a, name="tool")
    client = client_with(raw)
    customer = a.customers.get()
    assert len(client.get(reverse("customer-list"), {"tag": "VIP"}).json()["results"]) == 1
    assert client.get(reverse("customer-list"), {"tag": "none"}).json()["results"] == []
    assert len(client.get(reverse("customer-list"), {"segment": "vip"}).json()["results"]) == 1
    detail = client.get(reverse("customer-detail", kwargs={"pk": customer.pk})).json()
    assert detail["tags"] == ["vip"] and sorted(s["slug"] for s in detail["segments"]) == ["vip", "vip-frozen"]


def test_time_filters_take_any_offset_python_reads_and_refuse_times_out_of_range(stores):
    a, _b = stores
    _key, raw = api_key_create(store=a, name="tool")
    client = client_with(raw)
    customer = a.customers.get()
    customer.last_order_at = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
    customer.save()
    # -22:36 is beyond PostgreSQL's ±15:59 (a 500 before): 2026-11-20 12:00 UTC is 13:24 the day before there.
    found = client.get(reverse("customer-list"), {"last_order_after": "2026-11-19T13:24:00-22:36"}).json()
    later = client.get(reverse("customer-list"), {"last_order_after": "2026-11-19T13:25:00-22:36"}).json()
    assert [c["id"] for c in found["results"]] == [customer.pk] and later["results"] == []
    refused = client.get(reverse("order-list"), {"created_after": "0001-01-01T00:00:00+05:00"})
    assert refused.status_code == 400 and "created_after" in json.dumps(refused.json())


def test_openapi_schema_validates_without_warnings(db):
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out, stderr=io.StringIO())
    assert "openapi: 3" in out.getvalue() and "/api/v1/segments/{id}/members/" in out.getvalue()


def test_swagger_ui_is_served_from_local_files(client):
    page = client.get(reverse("api-docs")).content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in page and "cdn" not in page.lower()


def test_admin_makes_a_key_shown_once_and_revokes_it(stores, staff_client):
    a, _b = stores
    response = staff_client.post(reverse("admin:commerce_apikey_add"), {"store": a.pk, "name": "LINE tool",
                                                                       "scope": "read"}, follow=True)
    text = response.content.decode()
    raw = text[text.index("ecp_"):].split("<", 1)[0].strip()
    assert client_with(raw).get(reverse("store-list")).status_code == 200
    from ecpower.commerce.models import ApiKey

    key = ApiKey.objects.get(name="LINE tool")
    assert raw not in staff_client.get(reverse("admin:commerce_apikey_change", args=[key.pk])).content.decode()
    staff_client.post(reverse("admin:commerce_apikey_changelist"),
                      {"action": "revoke_selected", "_selected_action": [key.pk]})
    assert client_with(raw).get(reverse("store-list")).status_code == 401


def test_deleting_a_segment_another_one_uses_is_refused(stores):
    a, _b = stores
    _key, raw = api_key_create(store=a, name="crm", scope=ApiKeyScope.READ_WRITE)
    client = client_with(raw)
    vip = Segment.objects.get(store=a, slug="vip")
    segment_create(store=a, name="Not VIP", slug="not-vip", query="NOT in_segment('vip')")
    refused = client.delete(reverse("segment-detail", kwargs={"pk": vip.pk}))
    assert refused.status_code == 400 and "not-vip" in refused.json()["error"]["details"][0]["message"]
    assert client.delete(reverse("segment-detail", kwargs={"pk": Segment.objects.get(slug="not-vip").pk})
                         ).status_code == 204
    assert client.delete(reverse("segment-detail", kwargs={"pk": vip.pk})).status_code == 204
