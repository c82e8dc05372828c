"""Tag sync as a ledger, against the emulator: plan, per-call and bulk drains, faults, crashes."""

import pytest

from ecpower.commerce.models import Customer, CustomerTag, CustomerTagEvent
from integrations.jobs import sync_job_run, tag_sync_start
from integrations.models import AppliedTag, SyncJob, SyncJobStatus, TagOperation
from integrations.shopify.client import ShopifyClient
from integrations.shopify.connection import client_for
from integrations.shopify.importer import import_full
from integrations.tag_sync import TagSyncRefused
from segments.models import Membership
from segments.services import segment_create, segment_recompute
from tests.shopify_emulator import SHOP, TOKEN

TAG = "ecp-line"


def make_customers(shop, count: int, *, every: int = 2):
    """``count`` customers; every ``every``-th carries LINE連携 (the segment's rule)."""
    for n in range(count):
        shop.add_customer(email=f"m{n}@example.jp", tags=["LINE連携"] if n % every == 0 else ["常連"])


def line_segment(store, tag=TAG):
    segment = segment_create(store=store, name="LINE", query="customer_tags CONTAINS 'LINE連携'", shopify_tag=tag)
    segment_recompute(segment=segment)
    return segment


def shop_tagged(shop, tag=TAG) -> set[int]:
    return {cid for cid, c in shop.customers.items() if tag in c["tags"]}


def wanted(segment) -> set[int]:
    return set(Customer.objects.filter(memberships__segment=segment).values_list("shopify_id", flat=True))


def run(segment, **kwargs) -> SyncJob:
    job = tag_sync_start(segment=segment, **kwargs)
    sync_job_run(job.pk)
    job.refresh_from_db()
    return job


def test_sync_adds_then_removes_exactly_the_members_and_keeps_foreign_tags(connected_store, emulator, mailoutbox):
    shop = emulator.shop
    make_customers(shop, 40)
    connected_store.notification_email = "crm@example.jp"
    connected_store.save()
    import_full(store=connected_store)
    segment = line_segment(connected_store)

    job = run(segment)
    assert job.status == SyncJobStatus.SUCCEEDED
    assert (job.total, job.done, job.failed) == (20, 20, 0)
    assert shop_tagged(shop) == wanted(segment)
    assert AppliedTag.objects.filter(tag=TAG).count() == 20
    assert CustomerTag.objects.filter(name=TAG).count() == 20  # the local mirror follows
    assert len(mailoutbox) == 1 and "20" in mailoutbox[0].body and mailoutbox[0].to == ["crm@example.jp"]

    # Some members leave (their LINE tag goes in Shopify); re-import, recompute, sync again.
    leaving = sorted(wanted(segment))[:5]
    for cid in leaving:
        shop.customers[cid]["tags"] = [t for t in shop.customers[cid]["tags"] if t != "LINE連携"]
    import_full(store=connected_store)
    segment_recompute(segment=segment)
    job = run(segment)
    assert (job.total, job.done) == (5, 5)
    assert shop_tagged(shop) == wanted(segment)
    assert all("常連" in shop.customers[cid]["tags"] or "LINE連携" not in shop.customers[cid]["tags"]
               for cid in leaving)
    assert CustomerTagEvent.objects.filter(source="sync", action="removed", name=TAG).count() == 5

    # Nothing changed: nothing planned, no call made.
    calls = shop.tag_calls
    job = run(segment)
    assert job.total == 0 and shop.tag_calls == calls


def test_a_tag_someone_else_wrote_is_never_removed(connected_store, emulator):
    shop = emulator.shop
    make_customers(shop, 6)
    outsider = next(cid for cid, c in shop.customers.items() if "常連" in c["tags"])
    shop.customers[outsider]["tags"].append(TAG)  # written by the merchant, not by us
    import_full(store=connected_store)
    segment = line_segment(connected_store)
    run(segment)
    job = run(segment, remove=True)
    assert job.status == SyncJobStatus.SUCCEEDED
    assert shop_tagged(shop) == {outsider}
    assert AppliedTag.objects.count() == 0


def test_dry_run_counts_and_samples_without_writing(connected_store, emulator):
    make_customers(emulator.shop, 10)
    import_full(store=connected_store)
    segment = line_segment(connected_store)
    job = run(segment, dry_run=True)
    assert job.summary["plan"]["adds"] == 5 and len(job.summary["plan"]["samples"]) == 5
    assert not TagOperation.objects.exists() and not shop_tagged(emulator.shop)


def test_customers_at_the_250_tag_limit_are_reported_not_broken(connected_store, emulator):
    shop = emulator.shop
    make_customers(shop, 4)
    full = next(iter(shop.customers))
    shop.customers[full]["tags"] += [f"t{i}" for i in range(249)]
    import_full(store=connected_store)
    segment = line_segment(connected_store)
    job = run(segment)
    assert job.status == SyncJobStatus.PARTIAL
    assert job.summary["plan"]["at_tag_limit"] == 1
    assert shop_tagged(shop) == wanted(segment) - {full}
    assert "250" in TagOperation.objects.get(customer__shopify_id=full).error


def test_held_out_members_are_not_tagged(connected_store, emulator):
    make_customers(emulator.shop, 10)
    import_full(store=connected_store)
    segment = line_segment(connected_store)
    held = Membership.objects.filter(segment=segment).first()
    Membership.objects.filter(pk=held.pk).update(holdout=True)
    run(segment)
    assert shop_tagged(emulator.shop) == wanted(segment) - {held.customer.shopify_id}


def test_only_prefixed_tags_are_written(connected_store, emulator):
    segment = segment_create(store=connected_store, name="x", query="number_of_orders >= 1", shopify_tag="vip")
    with pytest.raises(TagSyncRefused):
        tag_sync_start(segment=segment)


@pytest.mark.slow
def test_bulk_sync_with_ten_percent_faults_converges_exactly(connected_store, emulator, settings):
    settings.TAG_SYNC_BULK_THRESHOLD = 500
    shop = emulator.shop
    make_customers(shop, 3000)
    import_full(store=connected_store)
    segment = line_segment(connected_store)
    shop.faults.http_error_rate = 0.1
    shop.faults.bulk_line_error_rate = 0.1
    client = ShopifyClient(SHOP, TOKEN, sleep=lambda s: None, max_retries=8)
    job = tag_sync_start(segment=segment)
    sync_job_run(job.pk, client=client)
    job.refresh_from_db()
    assert job.status == SyncJobStatus.SUCCEEDED, job.error
    assert job.summary["bulk_operations"] >= 2  # the first pass, then the lines that failed
    assert shop_tagged(shop) == wanted(segment)
    assert len(wanted(segment)) == 1500


def test_a_worker_killed_mid_drain_resumes_and_converges(connected_store, emulator):
    shop = emulator.shop
    make_customers(shop, 300)
    import_full(store=connected_store)
    segment = line_segment(connected_store)
    job = tag_sync_start(segment=segment)

    class Killed(BaseException):
        """What a SIGKILL looks like from inside: no except-block runs."""

    real = client_for(connected_store)
    apply = real.tags_change
    calls = []

    def dying(action, changes):
        failures = apply(action, changes)  # Shopify applied this batch…
        calls.append(len(changes))
        if len(calls) == 3:
            raise Killed  # …and the worker died before recording it
        return failures

    real.tags_change = dying
    with pytest.raises(Killed):
        sync_job_run(job.pk, client=real)
    job.refresh_from_db()
    assert job.status == SyncJobStatus.RUNNING
    assert job.done == 50 and len(shop_tagged(shop)) == 75  # 3 batches applied, 2 recorded
    assert sync_job_run(job.pk) == "skipped"  # its heartbeat is fresh: another worker may own it

    SyncJob.objects.filter(pk=job.pk).update(heartbeat_at=None)  # the stale-job check found it dead
    sent_before = shop.tag_calls
    assert sync_job_run(job.pk) == SyncJobStatus.SUCCEEDED
    assert shop_tagged(shop) == wanted(segment)
    # Only rows still pending were sent: the 100 unrecorded, of which the 25 in flight at the crash
    # were already in Shopify (tagsAdd of a present tag is a no-op); the 50 recorded were not resent.
    assert shop.tag_calls - sent_before == 100
    job.refresh_from_db()
    assert (job.done, job.failed, job.total) == (150, 0, 150)
