"""Writes of metrics beyond snapshots (``snapshots.py``) and the daily run (``pipeline.py``)."""

from __future__ import annotations

from django.db import transaction

from metrics.models import Journey, JourneyStage
from segments.models import SegmentGroup


@transaction.atomic
def journey_from_group(group: SegmentGroup) -> Journey:
    """A journey whose stages are the group's segments (by name; reorder them on the journey's page).

    A group that has a journey already gets that one back, its stages brought in line with the group.
    """
    journey = Journey.objects.filter(group=group).first() or Journey.objects.create(
        store=group.store, group=group, name=_unique_name(group))
    segments = list(group.segments.order_by("name"))
    kept = {stage.segment_id for stage in journey.stages.all()}
    journey.stages.exclude(segment__in=segments).delete()
    last = len(kept)
    for segment in segments:
        if segment.pk not in kept:
            JourneyStage.objects.create(journey=journey, segment=segment, position=last)
            last += 1
    return journey


def _unique_name(group: SegmentGroup) -> str:
    name, n = group.name, 2
    while Journey.objects.filter(store=group.store, name=name).exists():
        name, n = f"{group.name} ({n})", n + 1
    return name
