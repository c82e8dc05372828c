"""Metrics over the API: history, backfill, insights, compare, journeys, campaigns, daily runs."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.urls import reverse
from rest_framework.test import APIClient

from ecpower.commerce.access import api_key_create
from ecpower.commerce.models import ApiKeyScope, CustomerTag
from ecpower.commerce.services import customer_facts_refresh
from integrations.models import SyncJob
from metrics.models import Journey, PipelineRun
from metrics.snapshots import history_rebuild
from segments.services import segment_create, segment_recompute
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db
JST = dt.timezone(dt.timedelta(hours=9))


@pytest.fixture(autouse=True)
def fresh_throttle_cache():
    cache.clear()


def make_store(domain):
    store = StoreFactory(shopify_domain=domain, time_zone="Asia/Tokyo")
    a, b = CustomerFactory(store=store), CustomerFactory(store=store)
    CustomerTag.objects.create(store=store, customer=a, name="LINE連携")
    OrderFactory(store=store, customer=a, created_at=dt.datetime(2025, 3, 1, 10, tzinfo=JST), total=Decimal(3000))
    OrderFactory(store=store, customer=a, created_at=dt.datetime(2025, 3, 3, 10, tzinfo=JST), total=Decimal(1000))
    OrderFactory(store=store, customer=b, created_at=dt.datetime(2025, 3, 2, 10, tzinfo=JST), total=Decimal(2000))
    customer_facts_refresh(store=store)
    buyers = segment_create(store=store, name="Buyers", slug="buyers", query="number_of_orders >= 1")
    repeat = segment_create(store=store, name="Repeat", slug="repeat", query="number_of_orders >= 2")
    for segment in (buyers, repeat):
        segment_recompute(segment=segment)
    history_rebuild(store=store, since=dt.date(2025, 3, 1), until=dt.date(2025, 3, 4))
    return store, buyers, repeat


@pytest.fixture
def shop():
    return make_store("a.myshopify.com")


def client_for(store, scope=ApiKeyScope.READ_WRITE) -> APIClient:
    _key, raw = api_key_create(store=store, name="tool", scope=scope)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_snapshot_history_with_every_kpi_and_a_date_range(shop):
    store, buyers, _repeat = shop
    client = client_for(store, ApiKeyScope.READ)
    rows = client.get(reverse("segment-snapshots", args=[buyers.pk])).json()
    assert [(r["date"], r["members"], r["joined"]) for r in rows] == [
        ("2025-03-01", 1, 1), ("2025-03-02", 2, 1), ("2025-03-03", 2, 0), ("2025-03-04", 2, 0)]
    assert rows[-1]["ltv"] == "3000.00" and rows[-1]["repeat_rate"] == "0.5000" and rows[-1]["aov_customer"] == "2000.00"
    some = client.get(reverse("segment-snapshots", args=[buyers.pk]), {"since": "2025-03-02", "until": "2025-03-03"})
    assert [r["date"] for r in some.json()] == ["2025-03-02", "2025-03-03"]
    bad = client.get(reverse("segment-snapshots", args=[buyers.pk]), {"since": "March"}).json()["error"]
    assert bad["code"] == "invalid" and bad["details"][0]["field"] == "since"


def test_backfill_needs_a_write_key_and_returns_the_job(shop, django_capture_on_commit_callbacks):
    store, buyers, _repeat = shop
    url = reverse("segment-backfill", args=[buyers.pk])
    assert client_for(store, ApiKeyScope.READ).post(url, {}, format="json").status_code == 403
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(store).post(url, {"since": "2025-03-02"}, format="json")
    assert response.status_code == 202 and response.json()["kind"] == "metrics_backfill"
    job = SyncJob.objects.get(pk=response.json()["id"])
    assert job.status == "succeeded" and "2025-03-02" <= job.summary["first"] <= "2025-03-08"  # weekly that far back
    assert buyers.snapshots.filter(date="2025-03-01").exists()  # before since: kept
    started = client_for(store).post(reverse("sync-job-list"), {"store": store.pk, "kind": "metrics_backfill"},
                                     format="json")
    assert started.status_code == 202 and started.json()["segment"] is None
    refused = client_for(store).post(reverse("sync-job-list"), {"store": store.pk, "kind": "metrics_snapshot"},
                                     format="json")
    assert refused.status_code == 400 and refused.json()["error"]["details"][0]["field"] == "kind"


def test_popular_tags_top_products_and_compare(shop):
    store, buyers, repeat = shop
    client = client_for(store, ApiKeyScope.READ)
    tags = client.get(reverse("segment-popular-tags", args=[buyers.pk])).json()
    assert tags == [{"name": "LINE連携", "members": 1, "share": "0.5000", "store_customers": 1,
                     "store_share": "0.5000", "lift": "1.00"}]
    products = client.get(reverse("segment-top-products", args=[buyers.pk])).json()
    assert products == {"products": [], "product_types": [], "members": 2,  # these orders have no line items
                        "sampled_members": None}
    compare = client.get(reverse("segment-compare"), {"ids": f"{buyers.pk},{repeat.pk}", "kpi": "members"}).json()
    assert compare["labels"][0] == "2025-03-01"
    assert compare["series"] == {"buyers": [1, 2, 2, 2], "repeat": [0, 0, 1, 1]}
    assert client.get(reverse("segment-compare"), {"ids": str(buyers.pk), "kpi": "nope"}).status_code == 400
    other_store, other, _ = make_store("b.myshopify.com")
    assert client.get(reverse("segment-compare"), {"ids": f"{buyers.pk},{other.pk}"}).status_code == 404
    assert client.get(reverse("store-cohorts", args=[store.pk]), {"segment": other.pk}).status_code == 404
    assert client.get(reverse("store-rfm", args=[other_store.pk])).status_code == 404


def test_store_cohorts_and_rfm(shop):
    store, buyers, _repeat = shop
    client = client_for(store, ApiKeyScope.READ)
    cohorts = client.get(reverse("store-cohorts", args=[store.pk]), {"months": 2}).json()
    assert cohorts[0]["month"] == "2025-03-01" and cohorts[0]["customers"] == 2
    assert cohorts[0]["cells"][0] == {"offset": 0, "ltv": "3000.00", "repeat_rate": "0.5000",
                                      "orders_per_customer": "1.50"}
    rfm = client.get(reverse("store-rfm", args=[store.pk]), {"segment": buyers.pk}).json()
    assert rfm["customers"] == 2 and sum(sum(cells) for cells in rfm["grid"].values()) == 2
    assert {g["group"] for g in rfm["groups"]} >= {"CHAMPIONS", "PROSPECTS"}


def test_journeys_and_their_transitions(shop):
    store, buyers, repeat = shop
    client = client_for(store)
    created = client.post(reverse("journey-list"), {"store": store.pk, "name": "growth",
                                                    "stages": [buyers.pk, repeat.pk]}, format="json")
    assert created.status_code == 201, created.json()
    journey = Journey.objects.get(pk=created.json()["id"])
    assert [s.segment_id for s in journey.stages.all()] == [buyers.pk, repeat.pk]
    report = client.get(reverse("journey-transitions", args=[journey.pk]),
                        {"start": "2025-01-01", "end": "2030-01-01"}).json()
    assert report["members"] == {str(buyers.pk): 2, str(repeat.pk): 1}
    assert {"source": "outside", "target": str(buyers.pk), "customers": 2} in report["moves"]
    _other_store, other, _ = make_store("b.myshopify.com")
    foreign = client.post(reverse("journey-list"), {"store": store.pk, "name": "x", "stages": [other.pk]},
                          format="json")
    assert foreign.status_code == 400 and foreign.json()["error"]["details"][0]["field"].startswith("stages")
    reordered = client.patch(reverse("journey-detail", args=[journey.pk]), {"stages": [repeat.pk, buyers.pk]},
                             format="json")
    assert reordered.json()["stages"] == [repeat.pk, buyers.pk]


def test_campaigns_and_their_results(shop):
    store, buyers, _repeat = shop
    client = client_for(store)
    bad = client.post(reverse("campaign-list"), {"store": store.pk, "name": "x", "segments": [buyers.pk],
                                                 "starts_on": "2025-03-10", "ends_on": "2025-03-01"}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["details"][0]["field"] == "ends_on"
    created = client.post(reverse("campaign-list"), {"store": store.pk, "name": "spring", "segments": [buyers.pk],
                                                     "starts_on": "2025-03-02", "ends_on": "2025-03-03"},
                          format="json").json()
    results = client.get(reverse("campaign-results", args=[created["id"]])).json()
    assert results[0]["targets"] == {"customers": 2, "buyers": 2, "orders": 2, "revenue": "3000.00",
                                     "conversion": 1.0, "revenue_per_member": 1500.0}
    assert results[0]["holdout"] is None and results[0]["conversion_lift"] is None
    read_only = client_for(store, ApiKeyScope.READ)
    assert read_only.post(reverse("campaign-list"), {"store": store.pk, "name": "y", "segments": [],
                                                     "starts_on": "2025-03-02", "ends_on": "2025-03-03"},
                          format="json").status_code == 403


def test_daily_runs_are_listed_with_their_steps(shop):
    store, _buyers, _repeat = shop
    from metrics.pipeline import pipeline_run

    run = PipelineRun.objects.create(store=store, date=dt.date(2025, 3, 5))
    pipeline_run(run.pk)
    rows = client_for(store, ApiKeyScope.READ).get(reverse("daily-run-list")).json()["results"]
    assert rows[0]["status"] == "succeeded" and rows[0]["summary"]["recompute"]["status"] == "succeeded"
    assert len(rows[0]["jobs"]) == 2  # recompute and snapshots; the rest were skipped


def test_a_large_stores_cohorts_and_rfm_come_from_todays_kept_tables(shop, settings):
    from metrics.insight_reports import insight_report_request, insight_report_run
    from metrics.models import InsightKind

    settings.INSIGHTS_KEPT_ABOVE = 0  # every store counts as large
    store, _buyers, _repeat = shop
    client = client_for(store, ApiKeyScope.READ)
    computed = client.get(reverse("store-cohorts", args=[store.pk]))
    assert "Last-Modified" not in computed  # none kept today: computed for the request
    for kind in InsightKind.values:
        insight_report_run(insight_report_request(store=store, kind=kind).pk)
    # A new customer's first order since the tables were kept: the kept answer does not have it yet.
    OrderFactory(store=store, customer=CustomerFactory(store=store), total=Decimal(9000),
                 created_at=dt.datetime(2025, 4, 2, 10, tzinfo=JST))
    customer_facts_refresh(store=store)
    kept = client.get(reverse("store-cohorts", args=[store.pk]))
    assert kept.json() == computed.json() and "GMT" in kept["Last-Modified"]
    fresh = client.get(reverse("store-cohorts", args=[store.pk]), {"months": 6}).json()  # not the kept months
    assert [c["month"] for c in fresh] == ["2025-03-01", "2025-04-01"]
    rfm = client.get(reverse("store-rfm", args=[store.pk]))
    assert rfm.json()["customers"] == 2 and "Last-Modified" in rfm
