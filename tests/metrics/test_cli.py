"""manage.py metrics: snapshot, backfill, show (one row per day with every KPI), run."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from ecpower.commerce.services import customer_facts_refresh
from metrics.models import SegmentSnapshot
from segments.selectors import store_today
from segments.services import segment_create
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def store():
    store = StoreFactory(shopify_domain="cli.myshopify.com", time_zone="Asia/Tokyo")
    today = store_today(store)
    for n, days_ago in enumerate((20, 12, 5)):
        customer = CustomerFactory(store=store)
        created = dt.datetime.combine(today - dt.timedelta(days=days_ago), dt.time(12), tzinfo=store.zone)
        OrderFactory(store=store, customer=customer, created_at=created, total=Decimal(1000 * (n + 1)))
    customer_facts_refresh(store=store)
    segment_create(store=store, name="Buyers", slug="buyers", query="number_of_orders >= 1")
    return store


def run(*args) -> str:
    out = io.StringIO()
    call_command("metrics", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_backfill_then_show_prints_one_row_per_day_with_every_kpi(store):
    assert "snapshots over 20 days" in run("backfill", "--store", store.shopify_domain)
    text = run("show", "--store", store.shopify_domain, "--slug", "buyers", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 20
    assert list(rows[0]) == ["date", "period_days", "members", "joined", "left", "orders", "revenue", "buyers",
                             "repeat_rate", "ltv", "aov_customer", "aov_order", "avg_orders",
                             "purchase_interval_days", "approximate", "source"]
    last = rows[-1]
    assert (last["date"], last["members"], last["ltv"]) == (
        str(store_today(store) - dt.timedelta(days=1)), "3", "2000.00")
    table = run("show", "--store", store.shopify_domain, "--slug", "buyers")
    assert table.splitlines()[0].split()[:3] == ["date", "period_days", "members"]


def test_snapshot_records_yesterday_and_refuses_today(store):
    run("snapshot", "--store", store.shopify_domain)
    assert SegmentSnapshot.objects.filter(date=store_today(store) - dt.timedelta(days=1)).exists()
    assert "up to date" in run("snapshot", "--store", store.shopify_domain)
    with pytest.raises(CommandError, match="only finished days"):
        run("snapshot", "--store", store.shopify_domain, "--date", str(store_today(store)))
    day = store_today(store) - dt.timedelta(days=3)
    SegmentSnapshot.objects.filter(date=day).delete()
    run("snapshot", "--store", store.shopify_domain, "--date", str(day))
    assert SegmentSnapshot.objects.get(date=day).members == 3


def test_unknown_store_segment_or_date_are_clear_errors(store):
    with pytest.raises(CommandError, match="No store"):
        run("snapshot", "--store", "nope.myshopify.com")
    with pytest.raises(CommandError, match="No segment 'vip'"):
        run("show", "--store", store.shopify_domain, "--slug", "vip")
    with pytest.raises(CommandError, match="not a date"):
        run("backfill", "--store", store.shopify_domain, "--since", "2025-13-01")


def test_run_executes_the_daily_run_in_process(store):
    text = run("run", "--store", store.shopify_domain)
    assert "recompute  succeeded" in text and "import     skipped" in text


def test_backfill_can_be_queued_for_the_workers(store):
    from integrations.models import SyncJob

    text = run("backfill", "--store", store.shopify_domain, "--queue")
    job = SyncJob.objects.get(kind="metrics_backfill")
    assert f"Queued backfill job #{job.pk}" in text and job.summary["all"] is True
