"""50 stores' daily runs on the real Redis broker with two worker processes.

Every store is processed exactly once, both workers share the runs, and the results equal those of
one worker running the same day store after store. PostgreSQL and Redis only (CI has both).
"""

from __future__ import annotations

import datetime as dt
import random
import time
from decimal import Decimal

import pytest

from ecpower.commerce.models import Store
from ecpower.commerce.services import customer_facts_refresh
from integrations.models import SyncJob, SyncJobKind
from metrics.models import PipelineRun, SegmentSnapshot, SnapshotCursor, SnapshotMember
from metrics.pipeline import pipeline_run
from segments.models import ChangeBaseline, CustomerDigest, Membership, MembershipEvent, Segment
from segments.selectors import store_today
from segments.services import segment_create
from tests.factories import CustomerFactory, OrderFactory, StoreFactory
from tests.integrations.test_redis_workers import manage, redis_worker_env, stop, wait_for

pytestmark = pytest.mark.django_db(transaction=True)
REDIS_DB = 10
STORES = 50
FIELDS = ("members", "joined", "left", "orders", "revenue", "repeat_rate", "ltv", "aov_customer", "aov_order",
          "avg_orders", "purchase_interval_days")


@pytest.fixture
def redis_env():
    # One worker per cluster: the two clusters are the two worker processes.
    return redis_worker_env(REDIS_DB, Q_WORKERS="1")


def make_stores() -> list:
    rng = random.Random(50)
    stores = []
    for n in range(STORES):
        store = StoreFactory(shopify_domain=f"shop-{n}.myshopify.com", time_zone="Asia/Tokyo", daily_run_hour=0)
        today = store_today(store)
        customers = [CustomerFactory(store=store) for _ in range(8)]
        for _ in range(15):
            day = today - dt.timedelta(days=rng.randint(1, 15))
            OrderFactory(store=store, customer=rng.choice(customers), total=Decimal(rng.choice([900, 2400, 5200])),
                         created_at=dt.datetime.combine(day, dt.time(rng.randint(0, 23)), tzinfo=store.zone))
        customer_facts_refresh(store=store)
        segment_create(store=store, name="repeat", query="number_of_orders >= 2")
        segment_create(store=store, name="recent", query="last_order_date >= -5d")
        segment_create(store=store, name="big", query="amount_spent >= 5000 AND NOT rfm_group = 'DORMANT'")
        stores.append(store)
    return stores


def results() -> dict:
    snapshots = {
        (s.segment.store.shopify_domain, s.segment.slug, s.date): tuple(getattr(s, f) for f in FIELDS)
        for s in SegmentSnapshot.objects.select_related("segment__store")
    }
    members = dict(Segment.objects.values_list("id", "member_count"))
    return {"snapshots": snapshots, "members": members}


def test_fifty_stores_two_workers_each_store_once_same_results_as_one_worker(redis_env):
    make_stores()
    clusters = [manage(redis_env, "qcluster") for _ in range(2)]
    try:
        time.sleep(3)  # both clusters ready before the runs are queued
        code = "from metrics.pipeline import daily_dispatch; daily_dispatch()"
        assert manage(redis_env, "shell", "-c", code).wait(timeout=120) == 0
        wait_for(lambda: PipelineRun.objects.filter(finished_at__isnull=False).count() == STORES, timeout=240)
    finally:
        for cluster in clusters:
            stop(cluster)

    runs = PipelineRun.objects.all()
    assert runs.count() == STORES and set(runs.values_list("status", flat=True)) == {"succeeded"}
    assert len(set(runs.values_list("worker", flat=True))) == 2  # both workers took runs
    for kind in (SyncJobKind.SEGMENTS_RECOMPUTE, SyncJobKind.METRICS_SNAPSHOT):
        assert SyncJob.objects.filter(kind=kind).count() == STORES  # exactly once per store
    two_workers = results()
    assert len(two_workers["snapshots"]) > STORES * 3 * 10  # each store's history from its first order

    # The same day with one worker, store after store, from the same starting point.
    for model in (PipelineRun, SyncJob, SegmentSnapshot, SnapshotCursor, SnapshotMember, Membership,
                  MembershipEvent, ChangeBaseline, CustomerDigest):
        model.objects.all().delete()
    Segment.objects.update(member_count=0, baseline=0, last_computed_for=None)
    for store in Store.objects.order_by("id"):
        run = PipelineRun.objects.create(store=store, date=store_today(store))
        assert pipeline_run(run.pk) == "succeeded"
    assert results() == two_workers
