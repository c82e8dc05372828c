"""Cohorts and RFM of a large store: computed in the background, kept, shown at once and renewed each day."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import translation

from ecpower.commerce.models import StoreMembership, StoreRole
from ecpower.commerce.services import customer_facts_refresh, store_data_delete
from metrics import insights
from metrics.insight_reports import (
    cohorts_kept,
    insight_report_request,
    insight_report_run,
    insight_reports_refresh,
    rfm_kept,
)
from metrics.models import InsightKind, InsightReport, InsightStatus, PipelineRun, PipelineStatus
from metrics.pipeline import pipeline_run
from segments.selectors import store_today
from segments.services import segment_create, segment_recompute
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db
JST = dt.timezone(dt.timedelta(hours=9))


@pytest.fixture
def shop():
    """Three buyers over two months (one came back) and a prospect, in Tokyo."""
    store = StoreFactory(time_zone="Asia/Tokyo")
    a, b, c = (CustomerFactory(store=store) for _ in range(3))
    CustomerFactory(store=store)
    OrderFactory(store=store, customer=a, created_at=dt.datetime(2025, 3, 1, 10, tzinfo=JST), total=Decimal(3000))
    OrderFactory(store=store, customer=a, created_at=dt.datetime(2025, 4, 4, 10, tzinfo=JST), total=Decimal(1000))
    OrderFactory(store=store, customer=b, created_at=dt.datetime(2025, 3, 3, 10, tzinfo=JST), total=Decimal(2000))
    OrderFactory(store=store, customer=c, created_at=dt.datetime(2025, 4, 9, 10, tzinfo=JST), total=Decimal(5000))
    customer_facts_refresh(store=store)
    return store


@pytest.fixture
def large(settings):
    """Every store counts as large: its cohorts and RFM are kept reports."""
    settings.INSIGHTS_KEPT_ABOVE = 0


def cohorts_url(store) -> str:
    return reverse("admin:metrics_cohorts") + f"?store={store.pk}"


def test_a_large_stores_cohorts_page_queues_the_table_then_shows_the_kept_one_at_once(
        client, django_user_model, django_capture_on_commit_callbacks, shop, large):
    client.force_login(django_user_model.objects.create_superuser("hanako", "h@example.jp", "pw"))
    with django_capture_on_commit_callbacks() as queued:  # no worker yet
        first = client.get(cohorts_url(shop))
    kept = first.context["kept"]
    assert kept.status == InsightStatus.QUEUED and len(queued) == 1
    assert first.context["tables"][0].rows == []
    assert 'id="kept-report"' in first.content.decode() and 'data-status="queued"' in first.content.decode()

    queued[0]()  # the worker computes it
    kept.refresh_from_db()
    assert kept.status == InsightStatus.DONE and kept.seconds is not None and kept.day == store_today(shop)
    with django_capture_on_commit_callbacks() as again:
        second = client.get(cohorts_url(shop))
    assert again == []  # today's table is kept: nothing computed on the view
    rows = second.context["tables"][0].rows
    assert [row[:4] for row in rows] == [["2025-03", 2, Decimal("2500.00"), Decimal("3000.00")],
                                         ["2025-04", 1, Decimal("5000.00"), Decimal("5000.00")]]
    # The same table the page computes for a small store, and the CSV is what the page shows.
    small = insights.cohorts(shop, months=12)
    assert [[c.month, c.customers, c.cells] for c in cohorts_kept(kept)] == [
        [c.month, c.customers, c.cells] for c in small]
    csv_text = client.get(cohorts_url(shop) + "&format=csv").content.decode("utf-8-sig")
    assert csv_text.splitlines()[1].startswith("2025-03,2,2500.00,3000.00")


def test_a_small_store_computes_its_tables_on_the_page_and_keeps_nothing(staff_client, shop):
    page = staff_client.get(cohorts_url(shop))
    assert page.context["tables"][0].rows[0][:3] == ["2025-03", 2, Decimal("2500.00")]
    assert "kept" not in page.context
    assert staff_client.get(reverse("admin:metrics_rfm") + f"?store={shop.pk}").context["summary"].customers == 4
    assert not InsightReport.objects.exists()


def test_a_table_from_an_earlier_day_is_shown_while_todays_is_computed(
        client, django_user_model, django_capture_on_commit_callbacks, shop, large):
    client.force_login(django_user_model.objects.create_superuser("hanako", "h@example.jp", "pw"))
    report = insight_report_request(store=shop, kind=InsightKind.COHORTS)
    insight_report_run(report.pk)
    InsightReport.objects.filter(pk=report.pk).update(day=dt.date(2025, 4, 30))
    with django_capture_on_commit_callbacks() as queued:
        page = client.get(cohorts_url(shop))
    assert len(queued) == 1 and page.context["kept"].status == InsightStatus.QUEUED
    assert page.context["tables"][0].rows[0][:2] == ["2025-03", 2]  # yesterday's table meanwhile
    with django_capture_on_commit_callbacks() as twice:
        client.get(cohorts_url(shop))
    assert twice == []  # already queued: not queued again


def test_compute_again_queues_a_new_table_even_today(staff_client, shop, large):
    report = insight_report_request(store=shop, kind=InsightKind.RFM)
    insight_report_run(report.pk)
    before = InsightReport.objects.get(pk=report.pk).computed_at
    response = staff_client.post(reverse("admin:metrics_rfm") + f"?store={shop.pk}")
    assert response.status_code == 302 and response["Location"].endswith(f"?store={shop.pk}")
    report.refresh_from_db()
    assert report.status == InsightStatus.DONE and report.computed_at > before  # the worker ran it (sync in tests)


def test_running_twice_computes_once(shop, large):
    report = insight_report_request(store=shop, kind=InsightKind.COHORTS)
    assert insight_report_run(report.pk) == InsightStatus.DONE
    computed_at = InsightReport.objects.get(pk=report.pk).computed_at
    assert insight_report_run(report.pk) == "skipped"  # a duplicate delivery of the task
    assert InsightReport.objects.get(pk=report.pk).computed_at == computed_at
    assert insight_report_request(store=shop, kind=InsightKind.COHORTS).pk == report.pk
    assert InsightReport.objects.count() == 1


def test_a_failed_computing_keeps_the_last_table_and_is_tried_again_on_the_next_view(
        client, django_user_model, django_capture_on_commit_callbacks, shop, large, monkeypatch):
    report = insight_report_request(store=shop, kind=InsightKind.COHORTS)
    insight_report_run(report.pk)
    kept = InsightReport.objects.get(pk=report.pk).data

    def broken(*args, **kwargs):
        raise RuntimeError("canceling statement due to statement timeout")

    monkeypatch.setattr(insights, "cohorts", broken)
    again = insight_report_request(store=shop, kind=InsightKind.COHORTS, fresh=True)
    with pytest.raises(RuntimeError):
        insight_report_run(again.pk)
    failed = InsightReport.objects.get(pk=report.pk)
    assert failed.status == InsightStatus.FAILED and "statement timeout" in failed.error
    assert failed.data == kept

    client.force_login(django_user_model.objects.create_superuser("hanako", "h@example.jp", "pw"))
    with django_capture_on_commit_callbacks() as queued:
        page = client.get(cohorts_url(shop))
    assert len(queued) == 1  # tried again
    assert page.context["tables"][0].rows[0][:2] == ["2025-03", 2]
    status = client.get(reverse("admin:metrics_insight_report", args=[report.pk])).json()
    assert status["status"] == "queued" and status["error"] == ""


def test_kept_rfm_equals_the_computed_one_in_the_readers_language(shop, large):
    report = insight_report_request(store=shop, kind=InsightKind.RFM)
    with translation.override("en"):
        insight_report_run(report.pk)
        computed = insights.rfm_summary(shop)
    report.refresh_from_db()
    kept = rfm_kept(report)
    assert (kept.customers, kept.grid) == (computed.customers, computed.grid)
    assert [{k: v for k, v in g.items() if k != "label"} for g in kept.groups] == [
        {k: v for k, v in g.items() if k != "label"} for g in computed.groups]
    with translation.override("ja"):
        japanese = {g["group"]: g["label"] for g in rfm_kept(report).groups}
    with translation.override("en"):
        english = {g["group"]: g["label"] for g in rfm_kept(report).groups}
    assert japanese["CHAMPIONS"] != english["CHAMPIONS"]


def test_a_segments_kept_report_is_its_own(staff_client, shop, large):
    repeat = segment_create(store=shop, name="リピーター", slug="repeat", query="number_of_orders >= 2")
    segment_recompute(segment=repeat)
    url = reverse("admin:metrics_cohorts") + f"?segment={repeat.pk}"
    assert staff_client.get(url).context["kept"].segment_id == repeat.pk  # queued, computed once the view is done
    page = staff_client.get(url)
    assert [row[:2] for row in page.context["tables"][0].rows] == [["2025-03", 1]]
    assert InsightReport.objects.filter(segment__isnull=True).count() == 0


def test_another_stores_staff_cannot_follow_a_report(client, django_user_model, shop, large):
    report = insight_report_request(store=shop, kind=InsightKind.COHORTS)
    other = StoreFactory(shopify_domain="other.myshopify.com")
    user = django_user_model.objects.create_user("taro", "t@example.jp", "pw", is_staff=True)
    StoreMembership.objects.create(user=user, store=other, role=StoreRole.OWNER)
    client.force_login(user)
    assert client.get(reverse("admin:metrics_insight_report", args=[report.pk])).status_code == 404


def test_the_daily_run_queues_a_large_stores_own_reports(shop, large, monkeypatch):
    monkeypatch.setattr("django.utils.timezone.now", lambda: dt.datetime(2025, 7, 10, 18, 30, tzinfo=dt.UTC))
    run = PipelineRun.objects.create(store=shop, date=dt.date(2025, 7, 11))
    assert pipeline_run(run.pk) in (PipelineStatus.SUCCEEDED, PipelineStatus.PARTIAL)
    assert set(InsightReport.objects.filter(store=shop, segment__isnull=True).values_list("kind", "status")) == {
        (InsightKind.COHORTS, InsightStatus.QUEUED), (InsightKind.RFM, InsightStatus.QUEUED)}


def test_a_small_store_keeps_no_reports_from_its_daily_run(shop):
    assert insight_reports_refresh(store=shop) == []
    assert not InsightReport.objects.exists()


def test_emptying_a_store_drops_its_kept_tables(shop, large):
    insight_report_run(insight_report_request(store=shop, kind=InsightKind.COHORTS).pk)
    store_data_delete(store=shop)
    assert not InsightReport.objects.filter(store=shop).exists()
