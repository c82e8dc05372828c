"""Tag sync from the admin in a real browser: dry-run preview, then a job's live progress bar."""

from __future__ import annotations

import pytest

from integrations.jobs import sync_job_run, tag_sync_start
from integrations.models import SyncJob
from integrations.shopify.importer import import_full
from segments.services import segment_create, segment_recompute
from tests.e2e.conftest import SCREENSHOTS, admin_login

pytestmark = pytest.mark.django_db(transaction=True)


def test_preview_then_watch_a_tag_sync_progress(browser_page, live_server, django_user_model, connected_store,
                                                emulator, monkeypatch):
    from django_q.conf import Conf

    for n in range(60):
        emulator.shop.add_customer(email=f"m{n}@example.jp", tags=["LINE連携"] if n % 2 else [])
    import_full(store=connected_store)
    segment = segment_create(store=connected_store, name="LINE連携の方", query="customer_tags CONTAINS 'LINE連携'",
                             shopify_tag="ecp-line")
    segment_recompute(segment=segment)
    django_user_model.objects.create_superuser("hanako", "hanako@example.jp", "pw-for-tests")
    page = browser_page
    admin_login(page, live_server, "hanako", "pw-for-tests")

    # Dry run from the segment list: the job page lists what would change; Shopify is untouched.
    page.goto(f"{live_server.url}/admin/segments/conditionsegment/")
    page.check(f"input[name=_selected_action][value='{segment.pk}']")
    page.select_option("select[name=action]", "tag_dry_run_selected")
    page.click("button[name=index]")
    page.locator("ul.messagelist a").first.click()
    page.locator("#job-live[data-status=succeeded]").wait_for()
    assert "30" in page.locator("#job-live").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "tag-sync-dry-run.png"), full_page=True)
    assert not any("ecp-line" in c["tags"] for c in emulator.shop.customers.values())

    # A queued job (no worker yet): the page shows it waiting, then follows it without a reload.
    monkeypatch.setattr(Conf, "SYNC", False)
    job = tag_sync_start(segment=segment)
    page.goto(f"{live_server.url}/admin/integrations/syncjob/{job.pk}/change/")
    page.locator("#job-live[data-status=pending]").wait_for()
    assert page.locator("#job-progress").get_attribute("value") == "0"
    sync_job_run(job.pk)  # the worker picks it up
    page.locator("#job-live[data-status=succeeded]").wait_for()
    assert page.locator("#job-percent").inner_text() == "100%"
    assert page.locator("#job-done").inner_text() == "30"
    page.screenshot(path=str(SCREENSHOTS / "tag-sync-progress.png"), full_page=True)
    assert SyncJob.objects.get(pk=job.pk).done == 30
