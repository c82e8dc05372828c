"""A large store's cohorts in a real browser: the page follows the background computing and shows the table."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest

from ecpower.commerce.services import customer_facts_refresh
from metrics import insights
from metrics.insight_reports import insight_report_run
from metrics.models import InsightKind, InsightReport, InsightStatus
from segments.selectors import store_today
from tests.e2e.conftest import SCREENSHOTS, admin_login
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_cohorts_of_a_large_store_appear_once_the_worker_has_computed_them(
        browser_page, live_server, django_user_model, settings, monkeypatch):
    from django_q.conf import Conf

    settings.INSIGHTS_KEPT_ABOVE = 0  # every store counts as large
    monkeypatch.setattr(Conf, "SYNC", False)  # queued for a worker, which the test plays below
    rng = random.Random(5)
    store = StoreFactory(name="茶舗", time_zone="Asia/Tokyo")
    today = store_today(store)
    customers = [CustomerFactory(store=store) for _ in range(40)]
    for _ in range(120):
        day = today - dt.timedelta(days=rng.randint(1, 300))
        OrderFactory(store=store, customer=rng.choice(customers), total=Decimal(rng.choice([1200, 2800, 5400])),
                     created_at=dt.datetime.combine(day, dt.time(12), tzinfo=store.zone))
    customer_facts_refresh(store=store)
    django_user_model.objects.create_superuser("hanako", "hanako@example.jp", "pw-for-tests")
    page = browser_page
    admin_login(page, live_server, "hanako", "pw-for-tests")

    page.goto(f"{live_server.url}/admin/metrics/segmentsnapshot/cohorts/?store={store.pk}")
    page.locator("#kept-report[data-status=queued]").wait_for()
    assert page.locator("#kept-computing").is_visible() and not page.locator("#kept-failed").is_visible()
    assert page.locator("table.metrics-table tbody tr").first.inner_text().strip() != ""  # "nothing to show yet"
    page.screenshot(path=str(SCREENSHOTS / "kept-cohorts-computing.png"), full_page=True)

    report = InsightReport.objects.get(store=store, kind=InsightKind.COHORTS)
    insight_report_run(report.pk)  # the worker picks it up; the page reloads by itself
    page.locator("#kept-report[data-status=done]").wait_for()
    assert not page.locator("#kept-computing").is_visible()
    rows = page.locator("table.metrics-table").first.locator("tbody tr")
    expected = insights.cohorts(store)  # the table a small store's page computes itself
    assert rows.count() == len(expected) >= 10  # a cohort per month of the last 300 days
    cells = rows.first.locator("td")
    assert [cells.nth(0).inner_text(), cells.nth(1).inner_text()] == [
        expected[0].month.strftime("%Y-%m"), str(expected[0].customers)]
    page.screenshot(path=str(SCREENSHOTS / "kept-cohorts.png"), full_page=True)

    # "Compute again now": queued again, the kept table stays on the page meanwhile.
    page.click("#kept-refresh button")
    page.locator("#kept-report[data-status=queued]").wait_for()
    assert page.locator("table.metrics-table").first.locator("tbody tr").count() == rows.count()
    assert InsightReport.objects.get(pk=report.pk).status == InsightStatus.QUEUED
