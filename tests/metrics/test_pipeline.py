"""The daily run: dispatch at each store's local hour, steps as jobs, failures, timeouts, catch-up."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone

from integrations.models import SyncJob, SyncJobKind, SyncJobStatus
from metrics.models import PipelineRun, PipelineStatus, SegmentSnapshot, SnapshotCursor
from metrics.pipeline import daily_dispatch, pipeline_run, runs_reap
from metrics.snapshots import history_rebuild
from segments.models import Segment
from segments.services import segment_create
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2025, 7, 10, 18, 30, tzinfo=dt.UTC)  # 03:30 on the 11th in Tokyo, 11:30 on the 10th in LA


def small_store(**fields):
    store = StoreFactory(**fields)
    customer = CustomerFactory(store=store)
    OrderFactory(store=store, customer=customer, created_at=NOW - dt.timedelta(days=10), total=Decimal(2000))
    from ecpower.commerce.services import customer_facts_refresh

    customer_facts_refresh(store=store)
    segment_create(store=store, name="buyers", query="number_of_orders >= 1")
    return store


@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setattr(timezone, "now", lambda: NOW)


def test_the_dispatcher_schedule_is_defined_in_code():
    from django_q.models import Schedule

    schedule = Schedule.objects.get(name="daily-run-dispatch")
    assert (schedule.func, schedule.schedule_type, schedule.minutes) == ("metrics.pipeline.daily_dispatch", "I", 15)
    assert not Schedule.objects.filter(name="daily-tag-sync").exists()


def test_each_store_runs_once_a_day_once_its_local_hour_has_come(frozen):
    tokyo = small_store(time_zone="Asia/Tokyo", daily_run_hour=3)
    los_angeles = small_store(time_zone="America/Los_Angeles", daily_run_hour=3)
    late = small_store(time_zone="Asia/Tokyo", daily_run_hour=4)

    assert daily_dispatch() == 2  # the LA store's 03:00 came hours ago; the other Tokyo store waits for 04:00
    assert set(PipelineRun.objects.values_list("store", "date")) == {
        (tokyo.pk, dt.date(2025, 7, 11)), (los_angeles.pk, dt.date(2025, 7, 10))}
    assert daily_dispatch() == 0  # a second scheduler (or a second machine) starts nothing new
    assert not PipelineRun.objects.filter(store=late).exists()
    assert daily_dispatch(now=NOW + dt.timedelta(hours=1)) == 1  # 04:30 in Tokyo


def test_the_largest_stores_start_first(frozen):
    small = small_store(name="A small shop")
    big = small_store(name="Z big shop")
    CustomerFactory.create_batch(3, store=big)

    assert daily_dispatch() == 2
    assert list(PipelineRun.objects.order_by("pk").values_list("store", flat=True)) == [big.pk, small.pk]


def test_a_run_records_every_step_as_a_job_and_mails_the_summary(frozen):
    store = small_store(time_zone="Asia/Tokyo", daily_run_hour=0, notification_email="crm@example.jp")
    daily_dispatch()  # tests run queued tasks inline
    run = PipelineRun.objects.get(store=store)
    assert run.status == PipelineStatus.SUCCEEDED, run.summary
    assert {step: s["status"] for step, s in run.summary.items()} == {
        "import": "skipped", "recompute": "succeeded", "snapshots": "succeeded", "tags": "skipped",
        "partners": "skipped", "email": "succeeded"}
    assert run.summary["import"]["reason"] == "not connected to Shopify"
    kinds = set(SyncJob.objects.filter(pipeline_run=run).values_list("kind", "status"))
    assert kinds == {(SyncJobKind.SEGMENTS_RECOMPUTE, "succeeded"), (SyncJobKind.METRICS_SNAPSHOT, "succeeded"),
                     (SyncJobKind.SUMMARY_EMAIL, "succeeded")}
    # The snapshot step recorded yesterday (the 10th) and the new segment's history before it.
    snapshot = SegmentSnapshot.objects.get(segment__store=store, date=dt.date(2025, 7, 10))
    assert (snapshot.members, snapshot.ltv) == (1, Decimal("2000.00"))
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["crm@example.jp"]
    assert "Daily run 2025-07-11: OK" in mail.outbox[0].subject
    assert "buyers: +1 −0" in mail.outbox[0].body


def test_a_failing_step_is_reported_and_the_others_still_run(frozen, monkeypatch):
    store = small_store(time_zone="Asia/Tokyo", daily_run_hour=0, notification_email="crm@example.jp")

    def broken(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr("segments.services.store_segments_recompute", broken)
    daily_dispatch()
    run = PipelineRun.objects.get(store=store)
    assert run.status == PipelineStatus.PARTIAL
    assert run.summary["recompute"] == {"status": "failed", "job": run.summary["recompute"]["job"],
                                        "error": "database went away"}
    assert run.summary["snapshots"]["status"] == "succeeded"
    assert SyncJob.objects.get(pk=run.summary["recompute"]["job"]).error == "database went away"
    assert "failed: recompute" in mail.outbox[0].subject and "database went away" in mail.outbox[0].body


def test_a_run_is_never_executed_twice(frozen):
    store = small_store(time_zone="Asia/Tokyo", daily_run_hour=0)
    run = PipelineRun.objects.create(store=store, date=dt.date(2025, 7, 11))
    assert pipeline_run(run.pk) == PipelineStatus.SUCCEEDED
    assert pipeline_run(run.pk) == "skipped"  # a duplicate delivery of the task
    assert SyncJob.objects.filter(pipeline_run=run, kind=SyncJobKind.SEGMENTS_RECOMPUTE).count() == 1


def test_a_stuck_run_is_failed_and_reported_by_the_next_dispatch(frozen, settings):
    store = small_store(time_zone="Asia/Tokyo", daily_run_hour=0, notification_email="crm@example.jp")
    stuck = PipelineRun.objects.create(store=store, date=dt.date(2025, 7, 10), status=PipelineStatus.RUNNING,
                                       step="snapshots", heartbeat_at=NOW - dt.timedelta(hours=2))
    job = SyncJob.objects.create(store=store, kind=SyncJobKind.METRICS_SNAPSHOT, pipeline_run=stuck,
                                 status=SyncJobStatus.RUNNING)
    assert runs_reap() == [stuck.pk]
    stuck.refresh_from_db()
    job.refresh_from_db()
    assert stuck.status == job.status == "failed"
    assert "snapshots" in stuck.error
    assert "Daily run 2025-07-10: Failed" in mail.outbox[0].subject
    assert runs_reap() == []  # reported once


def test_days_missed_while_down_are_caught_up_by_the_next_run_not_replayed(frozen):
    store = small_store(time_zone="Asia/Tokyo", daily_run_hour=0)
    history_rebuild(store=store, until=dt.date(2025, 7, 5))
    assert SnapshotCursor.objects.get(segment__store=store).date == dt.date(2025, 7, 5)
    daily_dispatch()  # down from the 6th to the 10th: one run today, five days of snapshots
    assert PipelineRun.objects.filter(store=store).count() == 1
    run = PipelineRun.objects.get(store=store)
    assert run.summary["snapshots"]["days"] == 5
    assert list(SegmentSnapshot.objects.filter(segment__store=store, date__gt=dt.date(2025, 7, 5))
                .values_list("date", flat=True)) == [dt.date(2025, 7, d) for d in range(6, 11)]


def test_a_changed_rule_gets_its_history_rebuilt_by_the_next_run(frozen):
    store = small_store(time_zone="Asia/Tokyo", daily_run_hour=0)
    history_rebuild(store=store, until=dt.date(2025, 7, 9))
    segment = store.segments.get()
    from segments.services import segment_update

    segment_update(segment=segment, query="number_of_orders >= 2")
    daily_dispatch()
    assert set(SegmentSnapshot.objects.filter(segment=segment).values_list("members", flat=True)) == {0}


def test_a_new_segment_gets_its_history_from_a_background_job_with_progress(frozen,
                                                                          django_capture_on_commit_callbacks):
    from segments.tasks import segment_recompute_run

    store = small_store(time_zone="Asia/Tokyo", daily_run_hour=0)
    segment = store.segments.get()
    with django_capture_on_commit_callbacks(execute=True):
        segment_recompute_run(segment.pk)  # what saving a segment in the admin or the API queues
    job = SyncJob.objects.get(kind=SyncJobKind.METRICS_BACKFILL)
    assert job.status == SyncJobStatus.SUCCEEDED and job.done == job.total == 10  # July 1st (the first order, Tokyo time) – 10th
    assert job.summary["days"] == 10
    assert SegmentSnapshot.objects.filter(segment=segment).count() == 10
    with django_capture_on_commit_callbacks(execute=True):
        segment_recompute_run(segment.pk)  # history is current: no second backfill
    assert SyncJob.objects.filter(kind=SyncJobKind.METRICS_BACKFILL).count() == 1


def test_a_connected_store_imports_and_pushes_each_tagged_segment(connected_store, emulator):
    for n in range(6):
        emulator.shop.add_customer(email=f"p{n}@example.jp", tags=["LINE連携"] if n % 2 else [])
    from integrations.shopify.importer import import_full

    import_full(store=connected_store)
    segment_create(store=connected_store, name="LINE", query="customer_tags CONTAINS 'LINE連携'",
                   shopify_tag="ecp-line")
    segment_create(store=connected_store, name="untagged", query="number_of_orders >= 0")
    emulator.shop.add_customer(email="late@example.jp", tags=["LINE連携"])  # arrives with today's import
    run = PipelineRun.objects.create(store=connected_store, date=dt.date.today())
    assert pipeline_run(run.pk) == PipelineStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.summary["import"]["status"] == run.summary["tags"]["status"] == "succeeded"
    assert run.summary["tags"]["jobs"] == {"line": "succeeded"}  # one tag sync, for the tagged segment only
    tagged = {c["email"] for c in emulator.shop.customers.values() if "ecp-line" in c["tags"]}
    assert tagged == {"p1@example.jp", "p3@example.jp", "p5@example.jp", "late@example.jp"}
    assert not mail.outbox  # the run's steps are not mailed one by one


def _backend() -> int:
    """This connection's server process on PostgreSQL; the thread on SQLite."""
    import threading

    from django.db import connection

    if connection.vendor != "postgresql":
        return threading.get_ident()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_side_by_side_runs_at_once_on_two_postgresql_connections(settings):
    import threading

    from django.db import connection

    from metrics.pipeline import side_by_side

    if connection.vendor != "postgresql":
        pytest.skip("side by side only on PostgreSQL; SQLite runs the steps one after another")
    meeting = threading.Barrier(2, timeout=10)  # each call waits for the other: only at once can both pass

    def call():
        meeting.wait()
        return _backend()

    first, second = side_by_side(call, call)
    assert len({first, second, _backend()}) == 3
    settings.PIPELINE_SIDE_BY_SIDE = False
    assert side_by_side(_backend, _backend) == [_backend(), _backend()]


def test_inside_a_transaction_side_by_side_runs_one_after_another():
    from metrics.pipeline import side_by_side

    # Other connections could not see this transaction's rows: the calls share it.
    assert side_by_side(_backend, _backend) == [_backend(), _backend()]


@pytest.mark.django_db(transaction=True)
def test_a_run_with_its_recompute_and_snapshots_side_by_side_records_both(frozen):
    store = small_store(time_zone="Asia/Tokyo", daily_run_hour=0)
    daily_dispatch()
    run = PipelineRun.objects.get(store=store)
    assert run.status == PipelineStatus.SUCCEEDED
    assert (run.summary["recompute"]["status"], run.summary["snapshots"]["status"]) == ("succeeded", "succeeded")
    assert Segment.objects.get(store=store).member_count == 1
    assert SegmentSnapshot.objects.get(segment__store=store, date=dt.date(2025, 7, 10)).members == 1


@pytest.mark.django_db(transaction=True)
def test_the_recomputes_pushes_go_out_while_the_snapshots_are_still_taken(frozen, monkeypatch):
    import threading

    from django.db import connection

    from metrics import pipeline

    if connection.vendor != "postgresql":
        pytest.skip("side by side only on PostgreSQL; SQLite runs the steps one after another")
    store = small_store(time_zone="Asia/Tokyo", daily_run_hour=0)
    snapshots_started, pushed = threading.Event(), threading.Event()
    steps_seen: list[str] = []

    def tags(run, job, progress):  # waits for the snapshots to be under way (or fails after 10 s)
        beside = snapshots_started.wait(10)
        steps_seen.append(PipelineRun.objects.get(pk=run.pk).step)
        pushed.set()
        return (SyncJobStatus.SUCCEEDED if beside else SyncJobStatus.FAILED), {}

    def snapshots(run, job, progress):  # finishes only once the tags went out (or fails after 10 s)
        snapshots_started.set()
        return (SyncJobStatus.SUCCEEDED if pushed.wait(10) else SyncJobStatus.FAILED), {}

    monkeypatch.setitem(pipeline.STEP_FUNCTIONS, "tags", tags)
    monkeypatch.setitem(pipeline.STEP_FUNCTIONS, "snapshots", snapshots)
    daily_dispatch()
    run = PipelineRun.objects.get(store=store)
    assert run.status == PipelineStatus.SUCCEEDED
    assert (run.summary["recompute"]["status"], run.summary["tags"]["status"]) == ("succeeded", "succeeded")
    assert run.summary["snapshots"]["status"] == "succeeded"  # the tags did not wait for the snapshots
    assert steps_seen == ["snapshots+tags"]  # what the run showed while both ran
    assert Segment.objects.get(store=store).member_count == 1


def test_a_deletion_asked_for_during_a_run_stops_its_next_steps(frozen, monkeypatch):
    from ecpower.commerce.models import Store
    from metrics import pipeline

    store = small_store(time_zone="Asia/Tokyo", daily_run_hour=0)
    run = PipelineRun.objects.create(store=store, date=dt.date(2025, 7, 11))

    def import_while_deleted(run, job, progress):  # someone deletes the store while the first step runs
        Store.objects.filter(pk=run.store_id).update(deletion_requested_at=NOW)
        raise pipeline.StepSkipped("not connected to Shopify")

    monkeypatch.setitem(pipeline.STEP_FUNCTIONS, "import", import_while_deleted)
    pipeline_run(run.pk)
    run.refresh_from_db()
    later = [step for step in pipeline.STEPS if step != "import"]
    assert {step: run.summary[step] for step in later} == {
        step: {"status": "skipped", "reason": "the store is being deleted"} for step in later}
    assert not SyncJob.objects.filter(pipeline_run=run).exists()  # no step started
    assert not SegmentSnapshot.objects.filter(store=store).exists()
