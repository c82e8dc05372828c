"""Tag sync and imports over the API, against the Shopify emulator."""

from django.urls import reverse
from rest_framework.test import APIClient

from ecpower.commerce.access import api_key_create
from ecpower.commerce.models import ApiKeyScope
from integrations.jobs import sync_job_run
from integrations.models import SyncJob, SyncJobStatus
from integrations.shopify.importer import import_full
from segments.services import segment_create, segment_recompute
from tests.factories import StoreFactory
from tests.shopify_emulator import populate


def api(store, scope=ApiKeyScope.READ_WRITE) -> APIClient:
    _key, raw = api_key_create(store=store, name="partner", scope=scope)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_push_a_tag_through_the_api_and_follow_the_job(connected_store, emulator, django_capture_on_commit_callbacks):
    populate(emulator.shop, 6)
    import_full(store=connected_store)
    segment = segment_create(store=connected_store, name="LINE", query="customer_tags CONTAINS 'LINE連携'",
                             shopify_tag="ecp-line")
    segment_recompute(segment=segment)
    client = api(connected_store)

    dry = client.post(reverse("segment-tag-sync", kwargs={"pk": segment.pk}), {"dry_run": True}, format="json")
    assert dry.status_code == 202 and dry.json()["dry_run"] is True
    sync_job_run(dry.json()["id"])
    assert client.get(reverse("sync-job-detail", kwargs={"pk": dry.json()["id"]})).json()["summary"]["plan"]["adds"] == 3

    with django_capture_on_commit_callbacks(execute=True):  # the queued task runs (sync broker in tests)
        started = client.post(reverse("sync-job-list"), {"store": connected_store.pk, "kind": "tag_sync",
                                                         "segment": segment.pk}, format="json")
    assert started.status_code == 202, started.json()
    job = client.get(reverse("sync-job-detail", kwargs={"pk": started.json()["id"]})).json()
    assert (job["status"], job["done"], job["total"], job["percent"]) == ("succeeded", 3, 3, 100)
    assert sum("ecp-line" in c["tags"] for c in emulator.shop.customers.values()) == 3
    listed = client.get(reverse("sync-job-list"), {"kind": "tag_sync", "dry_run": "false"}).json()["results"]
    assert [j["id"] for j in listed] == [job["id"]]


def test_read_keys_cannot_start_jobs_and_foreign_segments_are_refused(connected_store, emulator):
    segment = segment_create(store=connected_store, name="x", query="number_of_orders >= 1", shopify_tag="ecp-x")
    reader = api(connected_store, ApiKeyScope.READ)
    refused = reader.post(reverse("segment-tag-sync", kwargs={"pk": segment.pk}), {}, format="json")
    assert refused.status_code == 403
    other = StoreFactory()
    outsider = api(other)
    response = outsider.post(reverse("sync-job-list"), {"store": other.pk, "kind": "tag_sync", "segment": segment.pk},
                             format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "segment"
    assert not SyncJob.objects.exclude(status=SyncJobStatus.PENDING).exists()


def test_a_tag_without_the_store_prefix_is_a_clear_400(connected_store, emulator):
    segment = segment_create(store=connected_store, name="x", query="number_of_orders >= 1", shopify_tag="vip")
    response = api(connected_store).post(reverse("segment-tag-sync", kwargs={"pk": segment.pk}), {}, format="json")
    assert response.status_code == 400 and "prefix" in response.json()["error"]["details"][0]["message"]
