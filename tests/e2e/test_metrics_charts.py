"""A segment's metrics page and the compare view in a real browser: Chart.js (served locally) draws them."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest

from ecpower.commerce.services import customer_facts_refresh
from metrics.snapshots import history_rebuild
from segments.selectors import store_today
from segments.services import segment_create, segment_recompute
from tests.e2e.conftest import SCREENSHOTS, admin_login
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_metrics_charts_render_from_local_files(browser_page, live_server, django_user_model):
    rng = random.Random(3)
    store = StoreFactory(name="茶舗", time_zone="Asia/Tokyo")
    today = store_today(store)
    customers = [CustomerFactory(store=store) for _ in range(60)]
    for _ in range(160):
        day = today - dt.timedelta(days=rng.randint(1, 120))
        OrderFactory(store=store, customer=rng.choice(customers), total=Decimal(rng.choice([1200, 2800, 5400])),
                     created_at=dt.datetime.combine(day, dt.time(12), tzinfo=store.zone))
    customer_facts_refresh(store=store)
    repeat = segment_create(store=store, name="リピーター", slug="repeat", query="number_of_orders >= 2")
    recent = segment_create(store=store, name="最近の購入者", slug="recent", query="last_order_date >= -30d")
    for segment in (repeat, recent):
        segment_recompute(segment=segment)
    history_rebuild(store=store)
    django_user_model.objects.create_superuser("hanako", "hanako@example.jp", "pw-for-tests")
    page = browser_page
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    admin_login(page, live_server, "hanako", "pw-for-tests")

    page.goto(f"{live_server.url}/admin/metrics/segmentsnapshot/segment/{repeat.pk}/")
    for chart in ("members", "flow", "revenue", "kpis", "habits"):
        page.locator(f"#chart-{chart}[data-rendered='1']").wait_for()
    assert page.evaluate("window.ecpCharts.length") == 5
    assert page.evaluate("window.ecpCharts[0].data.datasets[0].data.length") > 90
    page.screenshot(path=str(SCREENSHOTS / "metrics-segment.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/metrics/segmentsnapshot/compare/?ids={repeat.pk}&ids={recent.pk}&kpi=ltv")
    page.locator("#chart-compare[data-rendered='1']").wait_for()
    assert page.evaluate("window.ecpCharts[0].data.datasets.map(d => d.label)") == ["リピーター", "最近の購入者"]
    page.screenshot(path=str(SCREENSHOTS / "metrics-compare.png"), full_page=True)
    page.goto(f"{live_server.url}/admin/metrics/segmentsnapshot/rfm/?store={store.pk}")
    assert page.locator(".rfm-grid td").count() == 25
    page.screenshot(path=str(SCREENSHOTS / "metrics-rfm.png"), full_page=True)
    page.goto(f"{live_server.url}/admin/metrics/segmentsnapshot/cohorts/?segment={repeat.pk}")
    page.screenshot(path=str(SCREENSHOTS / "metrics-cohorts.png"), full_page=True)
    assert all(url.startswith(live_server.url) for url in requests)  # nothing fetched from elsewhere
