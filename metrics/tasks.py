"""Background work of metrics: history backfills as ``SyncJob`` rows. Tasks take ids; safe to run twice."""

from __future__ import annotations

import datetime as dt

from django.db import transaction

from ecpower.commerce.models import Store
from integrations.jobs import job_claim, job_progress, sync_job_finish
from integrations.models import SyncJob, SyncJobKind, SyncJobStatus
from segments.models import Segment


@transaction.atomic
def backfill_start(*, store: Store, segment: Segment | None = None, since: dt.date | None = None,
                   user=None, all_segments: bool = False) -> SyncJob:
    """Queue a rebuild of the history of ``segment`` (default: every segment whose history is stale,
    or every segment with ``all_segments``).

    An unfinished backfill of the same store and segment is returned instead of a second one.
    """
    waiting = SyncJob.objects.filter(store=store, kind=SyncJobKind.METRICS_BACKFILL, segment=segment,
                                     status__in=[SyncJobStatus.PENDING, SyncJobStatus.RUNNING]).first()
    if waiting:
        return waiting
    job = SyncJob.objects.create(store=store, kind=SyncJobKind.METRICS_BACKFILL, segment=segment, created_by=user,
                                 summary={"since": since.isoformat() if since else None, "all": all_segments})
    transaction.on_commit(lambda: _enqueue(job.pk))
    return job


def _enqueue(job_id: int) -> None:
    from django_q.tasks import async_task

    async_task("metrics.tasks.backfill_run", job_id, hook="integrations.jobs.sync_job_hook",
               task_name=f"backfill-{job_id}")


def backfill_run(job_id: int) -> str:
    """Run (or resume from the start: a rebuild replaces what a dead run half wrote) one backfill job."""
    from metrics.snapshots import history_rebuild, stale_segments

    job = job_claim(job_id)
    if job is None:
        return "skipped"
    since = job.summary.get("since")
    if job.segment:
        segments = [job.segment]
    else:
        segments = None if job.summary.get("all") else stale_segments(job.store)
    result = history_rebuild(store=job.store, segments=segments, since=dt.date.fromisoformat(since) if since else None,
                             progress=job_progress(job))
    status = SyncJobStatus.PARTIAL if result.failed else SyncJobStatus.SUCCEEDED
    return sync_job_finish(job, status, summary={**job.summary, **result.as_dict()}, notify=False)


def backfill_if_stale(store: Store) -> SyncJob | None:
    """After a recompute: queue a backfill when a segment is new or its rule changed."""
    from metrics.snapshots import stale_segments

    if not stale_segments(store):
        return None
    return backfill_start(store=store)
