"""The daily run of each store: import → recompute → tag sync → partner pushes, beside the snapshots → email.

``daily_dispatch`` is a django-q2 schedule (every 15 minutes, defined in code): for every store
whose local hour has reached its ``daily_run_hour`` it creates that local day's ``PipelineRun``
(unique per store and day, so many schedulers on many machines still make one) and queues
``pipeline_run`` with its id. Any number of ``qcluster`` workers share the queued runs; a run is
claimed atomically, so no store's run executes twice at once, and a run whose heartbeat is older
than ``PIPELINE_TIMEOUT`` is marked failed and reported by the next dispatch.

Each step is a ``SyncJob`` with progress. A failing step is recorded and the rest go on where
they can. Runs missed while the service was down are not replayed: the next run's snapshot step
catches up every day since the last snapshot.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, connection, connections, transaction
from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from ecpower.commerce.models import Store
from integrations.http import PartnerError
from integrations.models import SyncJob, SyncJobKind, SyncJobStatus
from metrics.models import PipelineRun, PipelineStatus

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The steps in groups of lanes: a group's lanes run side by side (``side_by_side``), each lane's steps one
# after another. Today's recompute, then the pushes of its changes (tags, partners), run beside yesterday's
# snapshots: both lanes read what the import wrote, and neither reads what the other writes.
STEP_GROUPS = ((("import",),), (("recompute", "tags", "partners"), ("snapshots",)), (("email",),))
STEPS = tuple(step for group in STEP_GROUPS for lane in group for step in lane)


class StepSkipped(Exception):
    """The step does not apply to this store (not connected, nothing configured)."""


# --- dispatch ------------------------------------------------------------------------------------


def daily_dispatch(now: dt.datetime | None = None) -> int:
    """Schedule entry: reap stuck runs, then start today's run of every store whose hour has come."""
    now = now or timezone.now()
    runs_reap(now=now)
    started = 0
    # Largest stores first: with several workers, a big store's long run starts early instead of
    # finishing alone while the other workers idle (docs/performance.md, step 8).
    for store in Store.objects.live().annotate(customer_count=Count("customers")).order_by("-customer_count", "pk"):
        local = now.astimezone(store.zone)
        if local.hour < store.daily_run_hour:
            continue
        run = pipeline_start(store=store, date=local.date())
        started += run is not None
    return started


def pipeline_start(*, store: Store, date: dt.date) -> PipelineRun | None:
    """Create and queue the store's run for ``date``; None when it already exists."""
    try:
        with transaction.atomic():
            run = PipelineRun.objects.create(store=store, date=date)
    except IntegrityError:
        return None
    from django_q.tasks import async_task

    async_task("metrics.pipeline.pipeline_run", run.pk, task_name=f"daily-run-{run.pk}",
               hook="metrics.pipeline.pipeline_hook")
    return run


def runs_reap(*, now: dt.datetime | None = None) -> list[int]:
    """Mark runs stuck past ``PIPELINE_TIMEOUT`` failed and report them; returns their ids."""
    now = now or timezone.now()
    stale = now - dt.timedelta(seconds=settings.PIPELINE_TIMEOUT)
    reaped = []
    for run in PipelineRun.objects.filter(status=PipelineStatus.RUNNING, heartbeat_at__lt=stale):
        message = _("Stopped answering during step %(step)s; marked failed after %(minutes)d minutes.") % {
            "step": run.step or "?", "minutes": settings.PIPELINE_TIMEOUT // 60}
        if PipelineRun.objects.filter(pk=run.pk, status=PipelineStatus.RUNNING, heartbeat_at__lt=stale).update(
                status=PipelineStatus.FAILED, finished_at=now, error=message):
            SyncJob.objects.filter(pipeline_run=run, status__in=[SyncJobStatus.PENDING, SyncJobStatus.RUNNING]
                                   ).update(status=SyncJobStatus.FAILED, finished_at=now, error=message)
            logger.error("Daily run %s of %s: %s", run.pk, run.store, message)
            run_report(run.pk)
            reaped.append(run.pk)
    return reaped


# --- run -------------------------------------------------------------------------------------------


def _claim(run_id: int) -> PipelineRun | None:
    now = timezone.now()
    stale = now - dt.timedelta(seconds=settings.PIPELINE_TIMEOUT)
    claimed = PipelineRun.objects.filter(pk=run_id, store__deletion_requested_at__isnull=True).filter(
        Q(status=PipelineStatus.PENDING) | Q(status=PipelineStatus.RUNNING, heartbeat_at__lt=stale)
    ).update(status=PipelineStatus.RUNNING, started_at=now, heartbeat_at=now,
             worker=f"{socket.gethostname()}:{os.getpid()}"[:100])
    if claimed != 1:
        return None
    return PipelineRun.objects.select_related("store").get(pk=run_id)


def pipeline_run(run_id: int) -> str:
    """Run one store's day. Safe to run twice: a run another worker holds (or finished) is skipped."""
    run = _claim(run_id)
    if run is None:
        return "skipped"
    summary: dict[str, dict] = {}
    running: list[str] = []  # the steps under way, shown as the run's step ("snapshots+tags")
    lock = threading.Lock()

    def lane(steps: tuple[str, ...]) -> None:
        for step in steps:
            if Store.objects.being_deleted().filter(pk=run.store_id).exists():  # asked for since the run began
                with lock:
                    summary[step] = {"status": "skipped", "reason": str(_("the store is being deleted"))}
                    PipelineRun.objects.filter(pk=run.pk).update(summary=summary)
                continue
            with lock:
                running.append(step)
                PipelineRun.objects.filter(pk=run.pk).update(step="+".join(running), heartbeat_at=timezone.now())
            outcome = _step(run, step)
            with lock:
                running.remove(step)
                summary[step] = outcome
                PipelineRun.objects.filter(pk=run.pk).update(summary=summary)

    for group in STEP_GROUPS:
        side_by_side(*[functools.partial(lane, steps) for steps in group])
    outcomes = {s["status"] for s in summary.values()} - {"skipped"}
    if outcomes <= {SyncJobStatus.SUCCEEDED}:
        status = PipelineStatus.SUCCEEDED
    elif SyncJobStatus.SUCCEEDED in outcomes or SyncJobStatus.PARTIAL in outcomes:
        status = PipelineStatus.PARTIAL
    else:
        status = PipelineStatus.FAILED
    PipelineRun.objects.filter(pk=run.pk, status=PipelineStatus.RUNNING).update(
        status=status, step="", finished_at=timezone.now())
    if not Store.objects.being_deleted().filter(pk=run.store_id).exists():
        from metrics.insight_reports import insight_reports_refresh

        insight_reports_refresh(store=run.store)  # a large store's cohorts and RFM of the day, in the background
    return status


def side_by_side_possible() -> bool:
    return settings.PIPELINE_SIDE_BY_SIDE and connection.vendor == "postgresql" and not connection.in_atomic_block


def side_by_side(*calls: Callable[[], T]) -> list[T]:
    """Run ``calls`` at once, each on its own thread and database connection, and return their results.

    Only on PostgreSQL outside a transaction (other connections could not see its rows) and with
    ``PIPELINE_SIDE_BY_SIDE``; otherwise one after another. A daily run's recompute and snapshots
    each keep one core busy, so side by side they take about as long as the longer of the two.
    """
    if len(calls) < 2 or not side_by_side_possible():
        return [call() for call in calls]

    def closing(call: Callable[[], T]) -> T:
        try:
            return call()
        finally:
            connections.close_all()  # this thread's own connections

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(closing, calls))


def pipeline_hook(task) -> None:
    """django-q2 completion hook: a run whose task crashed is failed and reported."""
    if task.success:
        return
    run_id = task.args[0] if task.args else None
    if PipelineRun.objects.filter(pk=run_id, status=PipelineStatus.RUNNING).update(
            status=PipelineStatus.FAILED, finished_at=timezone.now(), error=str(task.result or "")[:2000]):
        run_report(run_id)


STEP_KINDS = {
    "import": SyncJobKind.IMPORT_CHANGES,
    "recompute": SyncJobKind.SEGMENTS_RECOMPUTE,
    "snapshots": SyncJobKind.METRICS_SNAPSHOT,
    "tags": SyncJobKind.TAG_SYNC,
    "partners": SyncJobKind.PARTNER_PUSH,
    "email": SyncJobKind.SUMMARY_EMAIL,
}


def _step(run: PipelineRun, step: str) -> dict:
    """Run one step under its own SyncJob; never raises (the next steps go on)."""
    job = SyncJob.objects.create(store=run.store, kind=STEP_KINDS[step], pipeline_run=run,
                                 status=SyncJobStatus.RUNNING, started_at=timezone.now(),
                                 heartbeat_at=timezone.now())
    progress = _progress(job, run)
    try:
        status, summary = STEP_FUNCTIONS[step](run, job, progress)
    except StepSkipped as skipped:
        job.delete()
        return {"status": "skipped", "reason": str(skipped)}
    except Exception as exc:  # recorded on the job and the run; the other steps still run
        logger.exception("Daily run %s of %s: step %s failed", run.pk, run.store, step)
        SyncJob.objects.filter(pk=job.pk).update(status=SyncJobStatus.FAILED, finished_at=timezone.now(),
                                                 error=str(exc)[:2000], stage="")
        return {"status": SyncJobStatus.FAILED, "job": job.pk, "error": str(exc)[:500]}
    SyncJob.objects.filter(pk=job.pk).update(status=status, finished_at=timezone.now(), summary=summary, stage="")
    return {"status": status, "job": job.pk, **{k: v for k, v in summary.items() if k in SUMMARY_KEYS}}


SUMMARY_KEYS = ("days", "snapshots", "segments", "failed", "jobs", "sent", "changed")


def _progress(job: SyncJob, run: PipelineRun) -> Callable[[str, int, int], None]:
    def update(stage: str, done: int, total: int) -> None:
        now = timezone.now()
        SyncJob.objects.filter(pk=job.pk).update(stage=stage[:40], done=done, total=total, heartbeat_at=now)
        PipelineRun.objects.filter(pk=run.pk).update(heartbeat_at=now)

    return update


def _connected(store: Store):
    from integrations.models import ShopifyConnection

    connection = ShopifyConnection.objects.filter(store=store).first()
    if connection is None or not connection.is_connected:
        raise StepSkipped(_("not connected to Shopify"))
    return connection


def step_import(run: PipelineRun, job: SyncJob, progress) -> tuple[str, dict]:
    from integrations.shopify.importer import import_changes

    _connected(run.store)
    result = import_changes(store=run.store, progress=progress)
    return SyncJobStatus.SUCCEEDED, result.as_dict()


def daily_recompute(store: Store):
    """The recompute step's work: ``store_segments_refresh``, with the limit for running beside the
    snapshots when it does (one connection evaluating the changed customers then beats two evaluating
    everyone up to a larger share of the store)."""
    from segments.services import SCOPED_SHARE_MAX_BESIDE_SNAPSHOTS, store_segments_refresh

    return store_segments_refresh(
        store=store, scoped_share_max=SCOPED_SHARE_MAX_BESIDE_SNAPSHOTS if side_by_side_possible() else None)


def step_recompute(run: PipelineRun, job: SyncJob, progress) -> tuple[str, dict]:
    done = daily_recompute(run.store)
    summary = {
        "segments": len(done.results),
        "changed": {r.slug: [r.joined, r.left] for r in done.results if r.joined or r.left},
        "failed": done.failed,
    }
    SyncJob.objects.filter(pk=job.pk).update(total=len(done.results) + len(done.failed), done=len(done.results),
                                             failed=len(done.failed))
    return (SyncJobStatus.PARTIAL if done.failed else SyncJobStatus.SUCCEEDED), summary


def step_snapshots(run: PipelineRun, job: SyncJob, progress) -> tuple[str, dict]:
    from metrics.snapshots import snapshots_update

    result = snapshots_update(store=run.store, until=run.date - dt.timedelta(days=1), progress=progress)
    return (SyncJobStatus.PARTIAL if result.failed else SyncJobStatus.SUCCEEDED), result.as_dict()


def step_tags(run: PipelineRun, job: SyncJob, progress) -> tuple[str, dict]:
    from integrations.jobs import sync_job_run
    from segments.models import Segment, SegmentKind

    _connected(run.store)
    segments = list(Segment.objects.filter(store=run.store, kind=SegmentKind.CONDITION).exclude(shopify_tag=""))
    if not segments:
        raise StepSkipped(_("no condition segment has a Shopify tag"))
    results = {}
    for index, segment in enumerate(segments):
        tag_job = SyncJob.objects.create(store=run.store, kind=SyncJobKind.TAG_SYNC, segment=segment,
                                         pipeline_run=run)
        try:
            results[segment.slug] = sync_job_run(tag_job.pk)
        except PartnerError as exc:  # transient: the job stays resumable; tomorrow's run resumes it
            results[segment.slug] = f"retry later: {exc}"
        progress("tags", index + 1, len(segments))
    failed = {slug: r for slug, r in results.items() if r not in (SyncJobStatus.SUCCEEDED, "skipped")}
    return (SyncJobStatus.PARTIAL if failed else SyncJobStatus.SUCCEEDED), {"jobs": results, "failed": failed}


def step_partners(run: PipelineRun, job: SyncJob, progress) -> tuple[str, dict]:
    """Channel Talk (when connected), then partner webhooks (when any endpoint is registered)."""
    from integrations.channeltalk.push import channeltalk_push
    from integrations.models import ChannelTalkConnection
    from integrations.outbound import store_outbound_push

    summary, problems = {}, []
    if ChannelTalkConnection.objects.filter(store=run.store, active=True).exists():
        try:
            summary["channeltalk"] = channeltalk_push(store=run.store, progress=progress).as_dict()
        except PartnerError as exc:  # reported; the webhooks still go out
            summary["channeltalk"] = {"error": str(exc)}
            problems.append(f"Channel Talk: {exc}")
    webhooks = store_outbound_push(run.store)
    if webhooks:
        summary["webhooks"] = webhooks
        if webhooks["failed"] or webhooks["retry"] or webhooks["paused"]:
            problems.append(_("webhooks: %(n)d not delivered yet") % {"n": webhooks["failed"] + webhooks["retry"]})
    if not summary:
        raise StepSkipped(_("no partner integration is configured for this store"))
    if problems and len(problems) == len(summary):  # every configured partner failed
        raise RuntimeError("; ".join(problems))
    if problems:
        summary["failed"] = problems
    return (SyncJobStatus.PARTIAL if problems else SyncJobStatus.SUCCEEDED), summary


def step_email(run: PipelineRun, job: SyncJob, progress) -> tuple[str, dict]:
    if not run.store.notification_email:
        raise StepSkipped(_("the store has no notification email"))
    sent = run_report(run.pk)
    return SyncJobStatus.SUCCEEDED, {"sent": sent}


STEP_FUNCTIONS = {
    "import": step_import,
    "recompute": step_recompute,
    "snapshots": step_snapshots,
    "tags": step_tags,
    "partners": step_partners,
    "email": step_email,
}


# --- report ----------------------------------------------------------------------------------------


def run_report(run_id: int) -> bool:
    """Email the run's summary (step by step) to the store's notification address."""
    run = PipelineRun.objects.select_related("store").get(pk=run_id)
    if not run.store.notification_email:
        return False
    with translation.override(settings.LANGUAGE_CODE):
        subject, body = _report(run)
    send_mail(subject, body, None, [run.store.notification_email])
    return True


def _report(run: PipelineRun) -> tuple[str, str]:
    link = settings.PUBLIC_URL.rstrip("/") + reverse("admin:metrics_pipelinerun_change", args=[run.pk])
    failed = [step for step, s in (run.summary or {}).items() if s.get("status") == SyncJobStatus.FAILED]
    if run.error:
        state = run.get_status_display()
    elif failed:
        state = _("failed: %(steps)s") % {"steps": ", ".join(failed)}
    else:
        state = _("OK")
    subject = _("[%(store)s] Daily run %(date)s: %(state)s") % {"store": run.store.name, "date": run.date,
                                                                 "state": state}
    lines = [subject, ""]
    for step in STEPS:
        outcome = (run.summary or {}).get(step)
        if not outcome:
            continue
        text = outcome.get("reason") or outcome.get("error") or ""
        lines.append(f"- {step}: {outcome['status']}" + (f" ({text})" if text else ""))
        for slug, (joined, left) in sorted((outcome.get("changed") or {}).items()):
            lines.append(f"    {slug}: +{joined} −{left}")
        if outcome.get("days"):
            lines.append("    " + _("%(n)s days of snapshots") % {"n": outcome["days"]})
    if run.error:
        lines += ["", _("Error: %(error)s") % {"error": run.error}]
    lines += ["", link]
    return subject, "\n".join(lines)
