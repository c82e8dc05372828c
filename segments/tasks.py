"""Background tasks of segments. They take ids and are safe to run twice."""

from __future__ import annotations

import datetime as dt

from django.db import transaction

from segments.models import Segment, SegmentStatus
from segments.services import SegmentBusy, segment_recompute


def segment_recompute_run(segment_id: int, as_of: str | None = None) -> str:
    """Recompute one segment; a segment another worker holds is left to it."""
    segment = Segment.objects.select_related("store").get(pk=segment_id)
    try:
        result = segment_recompute(segment=segment, as_of=dt.date.fromisoformat(as_of) if as_of else None)
    except SegmentBusy:
        return "busy"
    from metrics.tasks import backfill_if_stale  # a new segment or a changed rule gets its history at once

    backfill_if_stale(segment.store)
    return f"{result.members} members (+{result.joined} −{result.left})"


def segment_recompute_enqueue(segment: Segment) -> None:
    """Mark the segment queued and queue its recompute once the current transaction commits."""
    from django_q.tasks import async_task

    Segment.objects.filter(pk=segment.pk).exclude(status=SegmentStatus.RUNNING).update(status=SegmentStatus.QUEUED)
    transaction.on_commit(
        lambda: async_task("segments.tasks.segment_recompute_run", segment.pk, task_name=f"segment-{segment.pk}")
    )
