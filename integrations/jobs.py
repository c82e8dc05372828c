"""Sync jobs: start them, run them (in django-q2), finish them and email the summary.

A job is a row first (``SyncJob``), then a task that takes its id. Running the task twice is safe:
a finished job is left alone, and a running one is resumed only when its heartbeat is older than
``STALE_AFTER`` (its worker died); the tag ledger makes the resumed drain exact.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from ecpower.commerce.models import Store
from integrations.http import PartnerError
from integrations.models import SyncJob, SyncJobKind, SyncJobStatus
from segments.models import Segment

logger = logging.getLogger(__name__)
STALE_AFTER = dt.timedelta(minutes=10)


class JobRefused(Exception):
    """The job cannot start (nothing to sync, another job of the same kind is running…)."""


# --- start -------------------------------------------------------------------------------------


def _enqueue(job: SyncJob) -> None:
    from django_q.tasks import async_task

    transaction.on_commit(lambda: async_task(
        "integrations.jobs.sync_job_run", job.pk, hook="integrations.jobs.sync_job_hook",
        task_name=f"sync-job-{job.pk}"))


@transaction.atomic
def import_start(*, store: Store, full: bool = False, user=None) -> SyncJob:
    from integrations.shopify.connection import connection_for

    connection_for(store)
    kind = SyncJobKind.IMPORT_FULL if full else SyncJobKind.IMPORT_CHANGES
    running = SyncJob.objects.filter(store=store, kind__in=[SyncJobKind.IMPORT_FULL, SyncJobKind.IMPORT_CHANGES],
                                     status__in=[SyncJobStatus.PENDING, SyncJobStatus.RUNNING]).first()
    if running:
        return running
    job = SyncJob.objects.create(store=store, kind=kind, created_by=user)
    _enqueue(job)
    return job


@transaction.atomic
def tag_sync_start(*, segment: Segment, user=None, dry_run: bool = False, remove: bool = False,
                   native_segment: bool = False) -> SyncJob:
    """Queue a tag sync (or removal, or dry run) of one segment; an unfinished one is returned instead."""
    from integrations.tag_sync import segment_tag

    segment_tag(segment)
    kind = SyncJobKind.TAG_REMOVE if remove else SyncJobKind.TAG_SYNC
    if not dry_run:
        running = SyncJob.objects.filter(segment=segment, kind__in=[SyncJobKind.TAG_SYNC, SyncJobKind.TAG_REMOVE],
                                         dry_run=False,
                                         status__in=[SyncJobStatus.PENDING, SyncJobStatus.RUNNING]).first()
        if running:
            return running
    job = SyncJob.objects.create(store=segment.store, kind=kind, segment=segment, dry_run=dry_run, created_by=user,
                                 summary={"native_segment": native_segment})
    _enqueue(job)
    return job


# --- run ---------------------------------------------------------------------------------------


def job_claim(job_id: int) -> SyncJob | None:
    now = timezone.now()
    claimed = SyncJob.objects.filter(pk=job_id).filter(
        Q(status=SyncJobStatus.PENDING)
        | Q(status=SyncJobStatus.RUNNING, heartbeat_at__lt=now - STALE_AFTER)
        # Left by a transient failure (or found dead): free to resume.
        | Q(status=SyncJobStatus.RUNNING, heartbeat_at__isnull=True)
    ).update(status=SyncJobStatus.RUNNING, started_at=now, heartbeat_at=now)
    if claimed != 1:
        return None
    return SyncJob.objects.select_related("store", "segment", "segment__store").get(pk=job_id)


def job_progress(job: SyncJob):
    def update(stage: str, done: int, total: int) -> None:
        SyncJob.objects.filter(pk=job.pk).update(stage=stage[:40], done=done, total=total, heartbeat_at=timezone.now())

    return update


def sync_job_run(job_id: int, client=None) -> str:
    """Run (or resume) one job. Returns its final status, or "skipped" when another worker has it."""
    job = job_claim(job_id)
    if job is None:
        return "skipped"
    from integrations.shopify.connection import client_for

    try:
        client = client or client_for(job.store)
        if job.kind in (SyncJobKind.IMPORT_FULL, SyncJobKind.IMPORT_CHANGES):
            summary = _run_import(job, client)
            return sync_job_finish(job, SyncJobStatus.SUCCEEDED, summary=summary)
        return _run_tag_sync(job, client)
    except PartnerError as exc:
        if not exc.permanent:
            # Transient: the job stays running; the broker's retry (or the next run) resumes it.
            SyncJob.objects.filter(pk=job.pk).update(error=str(exc)[:2000], heartbeat_at=None)
            raise
        return sync_job_finish(job, SyncJobStatus.FAILED, error=str(exc))


def _run_import(job: SyncJob, client) -> dict:
    from integrations.shopify.importer import import_changes, import_full
    from segments.services import store_segments_recompute

    run = import_full if job.kind == SyncJobKind.IMPORT_FULL else import_changes
    result = run(store=job.store, progress=job_progress(job), client=client)
    job_progress(job)("segments", 0, 0)
    store_segments_recompute(store=job.store)
    return result.as_dict()


def _run_tag_sync(job: SyncJob, client) -> str:
    from integrations.tag_sync import native_segment_create, tag_sync_drain, tag_sync_plan

    plan = tag_sync_plan(job=job)
    if job.dry_run:
        return sync_job_finish(job, SyncJobStatus.SUCCEEDED, summary={"plan": plan.as_dict()}, notify=False)
    SyncJob.objects.filter(pk=job.pk).update(stage="applying", heartbeat_at=timezone.now())
    drained = tag_sync_drain(job=job, client=client)
    extra = {"calls": drained.calls, "bulk_operations": drained.bulk_operations}
    if job.summary.get("native_segment") and job.kind == SyncJobKind.TAG_SYNC:
        extra["native_segment"] = native_segment_create(segment=job.segment, client=client) or "exists"
    job.refresh_from_db()
    status = SyncJobStatus.PARTIAL if job.failed else SyncJobStatus.SUCCEEDED
    return sync_job_finish(job, status, summary={**job.summary, **extra})


def sync_job_finish(job: SyncJob, status: str, *, summary: dict | None = None, error: str = "",
                    notify: bool = True) -> str:
    fields = {"status": status, "finished_at": timezone.now(), "stage": "", "error": error[:2000]}
    if summary is not None:
        fields["summary"] = summary
    SyncJob.objects.filter(pk=job.pk).update(**fields)
    if notify:
        sync_job_notify(job.pk)
    from integrations.outbound import job_finished_emit

    job_finished_emit(SyncJob.objects.select_related("store").get(pk=job.pk))
    return status


def sync_job_hook(task) -> None:
    """django-q2 completion hook: a task that crashed leaves its job failed and reported."""
    if task.success:
        return
    job_id = task.args[0] if task.args else None
    job = SyncJob.objects.filter(pk=job_id).first()
    if job is None or job.is_finished:
        return
    attempts = getattr(task, "attempt_count", 1) or 1
    if attempts < settings.Q_CLUSTER.get("max_attempts", 1) and job.heartbeat_at is None:
        return  # a transient failure the broker will retry
    sync_job_finish(job, SyncJobStatus.FAILED, error=str(task.result or "The task failed")[:2000])


# --- email -------------------------------------------------------------------------------------


def sync_job_notify(job_id: int) -> bool:
    """Email the store's notification address once per job. Returns whether a mail went out."""
    # Steps of a daily run are reported together, in the run's email (metrics.pipeline).
    claimed = SyncJob.objects.filter(pk=job_id, notified_at__isnull=True, pipeline_run__isnull=True).exclude(
        store__notification_email="").update(notified_at=timezone.now())
    if not claimed:
        return False
    job = SyncJob.objects.select_related("store", "segment").get(pk=job_id)
    with translation.override(settings.LANGUAGE_CODE):
        subject, body = _summary_mail(job)
    send_mail(subject, body, None, [job.store.notification_email])
    return True


def _summary_mail(job: SyncJob) -> tuple[str, str]:
    link = settings.PUBLIC_URL.rstrip("/") + reverse("admin:integrations_syncjob_change", args=[job.pk])
    subject = _("[%(store)s] %(kind)s: %(status)s") % {
        "store": job.store.name, "kind": job.get_kind_display(), "status": job.get_status_display()}
    lines = [subject, ""]
    if job.segment:
        lines.append(_("Segment: %(name)s (tag %(tag)s)") % {"name": job.segment.name, "tag": job.segment.shopify_tag})
    if job.kind in (SyncJobKind.TAG_SYNC, SyncJobKind.TAG_REMOVE):
        lines.append(_("Done: %(done)s of %(total)s, failed: %(failed)s") % {
            "done": job.done, "total": job.total, "failed": job.failed})
    plan = (job.summary or {}).get("plan") or {}
    if plan:
        lines.append(_("Tags added: %(adds)s, removed: %(removes)s") % plan)
        if plan.get("at_tag_limit"):
            lines.append(_("Customers at Shopify's 250-tag limit (not tagged): %(n)s") % {"n": plan["at_tag_limit"]})
    summary = job.summary or {}
    if job.kind == SyncJobKind.PARTNER_PUSH and "pushed" in summary:
        lines.append(_("Channel Talk users updated: %(pushed)s, unchanged: %(unchanged)s") % summary)
        for reason, n in (summary.get("skipped") or {}).items():
            lines.append(_("Not pushed (%(reason)s): %(n)s") % {"reason": reason, "n": n})
    if job.kind == SyncJobKind.METRICS_BACKFILL and summary.get("days"):
        lines.append(_("%(snapshots)s snapshots over %(days)s days (%(first)s – %(last)s)") % summary)
        for slug, why in (summary.get("approximate") or {}).items():
            lines.append(_("Approximate: %(slug)s (%(why)s)") % {"slug": slug, "why": why})
    for key in ("customers", "products", "orders"):
        counts = (job.summary or {}).get(key)
        if isinstance(counts, dict):
            lines.append(f"{key}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if job.error:
        lines += ["", _("Error: %(error)s") % {"error": job.error}]
    failures = job.tag_operations.filter(status="failed").values_list("shopify_customer_id", "tag", "error")[:20]
    if failures:
        lines += ["", _("First failures:")] + [f"  {cid} {tag}: {error}" for cid, tag, error in failures]
    lines += ["", link]
    return subject, "\n".join(lines)
