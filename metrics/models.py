"""Segment metrics over time, journeys, campaigns and the daily run (docs/metrics.md).

* ``SegmentSnapshot``: one segment's members and KPIs at the end of one day (or of a week, for
  the older part of a backfill).
* ``SnapshotMember``: who was in each segment at the end of its latest snapshot day; the next
  snapshot diffs against it for joins and leaves.
* ``Journey`` / ``JourneyStage``: ordered segments whose transitions are counted.
* ``Campaign``: list segments and a period, measured against their holdouts.
* ``PipelineRun``: one store's daily run; its steps are ``SyncJob`` rows.
* ``InsightReport``: a large store's cohorts or RFM table, computed in the background and kept.

Models hold fields and constraints; the computing is in ``metrics.snapshots``, ``metrics.insights``
and ``metrics.pipeline``.
"""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils.translation import gettext_lazy as _

from ecpower.commerce.models import MONEY, Customer, Store
from segments.models import CASCADE_THROUGH_SEGMENTS, UNCHECKED, Segment


class SnapshotSource(models.TextChoices):
    DAILY = "daily", _("Daily run")
    BACKFILL = "backfill", _("Backfill")


class SegmentSnapshot(models.Model):
    """A segment at the end of ``date`` (store time), and what its members did in the period ending then."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"))
    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="snapshots",
                                verbose_name=_("segment"))
    date = models.DateField(_("date"))
    period_days = models.PositiveSmallIntegerField(
        _("period (days)"), default=1,
        help_text=_("1 for a daily point; 7 for a weekly point of a long backfill (joins, leaves, orders and "
                    "revenue then cover the whole week)."))
    members = models.PositiveIntegerField(_("members"))
    joined = models.PositiveIntegerField(_("joined"))
    left = models.PositiveIntegerField(_("left"))
    orders = models.PositiveIntegerField(_("orders"), help_text=_("Counted orders members placed in the period."))
    revenue = models.DecimalField(_("revenue"), **MONEY,
                                  help_text=_("Their total, net of refunds, of those orders."))
    buyers = models.PositiveIntegerField(_("members with orders"))
    repeat_rate = models.DecimalField(_("repeat rate"), max_digits=7, decimal_places=4,
                                      help_text=_("Members with 2 or more orders ÷ members (0–1)."))
    ltv = models.DecimalField(_("LTV"), **MONEY, help_text=_("Amount spent ÷ members."))
    aov_customer = models.DecimalField(_("AOV (per customer)"), null=True, blank=True, **MONEY,
                                       help_text=_("Mean of each buying member's own average order value."))
    aov_order = models.DecimalField(_("AOV (per order)"), null=True, blank=True, **MONEY,
                                    help_text=_("Amount spent ÷ orders of all members."))
    avg_orders = models.DecimalField(_("orders per member"), max_digits=10, decimal_places=2)
    purchase_interval_days = models.DecimalField(
        _("days between purchases"), max_digits=10, decimal_places=1, null=True, blank=True,
        help_text=_("Mean over members with 2+ orders of (last − first order) ÷ (orders − 1)."))
    approximate = models.BooleanField(
        _("approximate"), default=False,
        help_text=_("The rule reads customer tags on a day before the store's tag history starts."))
    source = models.CharField(_("source"), max_length=10, choices=SnapshotSource.choices)
    computed_at = models.DateTimeField(_("computed at"), auto_now=True)

    class Meta:
        verbose_name = _("segment snapshot")
        verbose_name_plural = _("segment snapshots")
        ordering = ["segment", "date"]
        constraints = [models.UniqueConstraint(fields=["segment", "date"], name="snapshot_unique_day")]
        indexes = [
            # The compare view and the pipeline read one store's snapshots of a day range.
            models.Index(fields=["store", "date"], name="snapshot_store_date"),
        ]

    def __str__(self) -> str:  # the admin's title of one snapshot
        return f"{self.segment} · {self.date}"


class SnapshotMember(models.Model):
    """A member of ``segment`` at the end of its latest snapshot day."""

    # Members × segments rows, moved in bulk every day: references unchecked by the database and only
    # the unique index, as for segments.Membership (docs/performance.md).
    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"),
                              **UNCHECKED)
    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="+", verbose_name=_("segment"),
                                **UNCHECKED)  # indexed by snapshot_member_unique
    customer = models.ForeignKey(Customer, on_delete=CASCADE_THROUGH_SEGMENTS, related_name="+",
                                 verbose_name=_("customer"), **UNCHECKED)  # indexed after the segment

    class Meta:
        verbose_name = _("snapshot member")
        verbose_name_plural = _("snapshot members")
        constraints = [
            # Also the index of the joined/left diff of the next snapshot.
            models.UniqueConstraint(fields=["segment", "customer"], name="snapshot_member_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id} ∈ {self.segment_id}"


class Journey(models.Model):
    """Ordered stages (segments) customers move through, e.g. first purchase → repeat → loyal."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="journeys", verbose_name=_("store"))
    name = models.CharField(_("name"), max_length=200)
    description = models.TextField(_("description"), blank=True)
    group = models.ForeignKey("segments.SegmentGroup", on_delete=models.SET_NULL, null=True, blank=True,
                              related_name="journeys", verbose_name=_("made from group"))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("journey")
        verbose_name_plural = _("journeys")
        ordering = ["store", "name"]
        constraints = [models.UniqueConstraint(fields=["store", "name"], name="journey_unique_name")]

    def __str__(self) -> str:
        return self.name


class JourneyStage(models.Model):
    journey = models.ForeignKey(Journey, on_delete=models.CASCADE, related_name="stages", verbose_name=_("journey"))
    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="+", verbose_name=_("segment"))
    position = models.PositiveSmallIntegerField(_("position"), default=0)

    class Meta:
        verbose_name = _("stage")
        verbose_name_plural = _("stages")
        ordering = ["journey", "position", "id"]
        constraints = [models.UniqueConstraint(fields=["journey", "segment"], name="journey_stage_unique")]

    def __str__(self) -> str:
        return f"{self.position}. {self.segment}"


class Campaign(models.Model):
    """List segments sent a campaign over a period; measured against their holdouts."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="campaigns", verbose_name=_("store"))
    name = models.CharField(_("name"), max_length=200)
    segments = models.ManyToManyField(Segment, related_name="campaigns", verbose_name=_("segments"),
                                      help_text=_("Usually list segments frozen at the campaign's start."))
    starts_on = models.DateField(_("first day"))
    ends_on = models.DateField(_("last day"))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("campaign")
        verbose_name_plural = _("campaigns")
        ordering = ["-starts_on", "name"]

    def __str__(self) -> str:
        return self.name


class PipelineStatus(models.TextChoices):
    PENDING = "pending", _("Waiting")
    RUNNING = "running", _("Running")
    SUCCEEDED = "succeeded", _("Succeeded")
    PARTIAL = "partial", _("Finished with failures")
    FAILED = "failed", _("Failed")


class PipelineRun(models.Model):
    """One store's daily run for one local date: import → recompute → snapshots → tags → partners → email."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="pipeline_runs",
                              verbose_name=_("store"))
    date = models.DateField(_("date"), help_text=_("The store's local date the run belongs to."))
    status = models.CharField(_("status"), max_length=10, choices=PipelineStatus.choices,
                              default=PipelineStatus.PENDING)
    step = models.CharField(_("step"), max_length=30, blank=True)
    worker = models.CharField(_("worker"), max_length=100, blank=True, help_text=_("host:pid that ran it."))
    summary = models.JSONField(_("summary"), default=dict, blank=True,
                               help_text=_("Each step's outcome: succeeded, partial, failed or skipped, and why."))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    heartbeat_at = models.DateTimeField(_("last progress"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True)

    class Meta:
        verbose_name = _("daily run")
        verbose_name_plural = _("daily runs")
        ordering = ["-date", "store"]
        constraints = [
            # One run per store and day, however many dispatchers and workers there are.
            models.UniqueConstraint(fields=["store", "date"], name="pipeline_run_unique_day"),
        ]

    def __str__(self) -> str:
        return f"{self.store} {self.date}"


class SnapshotCursor(models.Model):
    """The day ``SnapshotMember`` describes for one segment: the next snapshot continues from it.

    Written in the same transaction as the members, so a crashed backfill leaves no cursor and the
    next run rebuilds that segment's history instead of diffing against half-written members.
    """

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"))
    segment = models.OneToOneField(Segment, on_delete=models.CASCADE, related_name="snapshot_cursor",
                                   verbose_name=_("segment"))
    date = models.DateField(_("members as of"))
    version = models.PositiveIntegerField(
        _("rule version"), default=0,
        help_text=_("The segment's rule version the history was computed with; another one rebuilds it."))
    baseline = models.PositiveIntegerField(
        _("baseline"), default=0,
        help_text=_("The number of the store's snapshots ChangeBaseline its members were computed from; "
                    "any other makes the next day evaluate every customer."))

    class Meta:
        verbose_name = _("snapshot cursor")
        verbose_name_plural = _("snapshot cursors")

    def __str__(self) -> str:
        return f"{self.segment_id} @ {self.date}"


class SnapshotLock(models.Model):
    """Held while a store's snapshots are written, so a backfill and a daily run never write at once.

    A holder refreshes ``heartbeat_at`` every day it records; one silent for ``STALE_AFTER`` (its
    worker died) is taken over.
    """

    store = models.OneToOneField(Store, on_delete=models.CASCADE, primary_key=True, related_name="+",
                                 verbose_name=_("store"))
    holder = models.CharField(_("holder"), max_length=100)
    heartbeat_at = models.DateTimeField(_("last progress"))

    class Meta:
        verbose_name = _("snapshot lock")
        verbose_name_plural = _("snapshot locks")

    def __str__(self) -> str:
        return f"{self.store_id}: {self.holder}"


class InsightKind(models.TextChoices):
    COHORTS = "cohorts", _("Cohorts")
    RFM = "rfm", _("RFM analysis")


class InsightStatus(models.TextChoices):
    QUEUED = "queued", _("Waiting for a worker")
    RUNNING = "running", _("Computing")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")


class InsightReport(models.Model):
    """The cohorts or RFM table of a large store, or of one of its segments, computed in the background and kept.

    Each reads every buyer or every counted order (10 s and 8 s at a million customers), so above
    ``settings.INSIGHTS_KEPT_ABOVE`` customers the admin shows the kept table at once and computes a new one
    in the background when it is from an earlier day or asked for (``metrics.insight_reports``). ``data`` is
    the last table computed; ``status`` is that of the latest computing, so a failed or running one still
    shows the table before it.
    """

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"))
    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, null=True, blank=True, related_name="+",
                                verbose_name=_("segment"), db_index=False)  # indexed by insight_report_segment
    kind = models.CharField(_("report"), max_length=10, choices=InsightKind.choices)
    status = models.CharField(_("status"), max_length=10, choices=InsightStatus.choices,
                              default=InsightStatus.QUEUED)
    data = models.JSONField(_("table"), null=True, blank=True, encoder=DjangoJSONEncoder)
    day = models.DateField(_("as of"), null=True, blank=True,
                           help_text=_("The store's local date the kept table was computed on."))
    computed_at = models.DateTimeField(_("computed at"), null=True, blank=True)
    seconds = models.FloatField(_("seconds to compute"), null=True, blank=True)
    requested_at = models.DateTimeField(_("requested at"))
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True)

    class Meta:
        verbose_name = _("kept insight report")
        verbose_name_plural = _("kept insight reports")
        constraints = [
            # One kept report per store and kind, and per segment and kind; also the indexes each page reads.
            models.UniqueConstraint(fields=["store", "kind"], condition=models.Q(segment__isnull=True),
                                    name="insight_report_store"),
            models.UniqueConstraint(fields=["segment", "kind"], condition=models.Q(segment__isnull=False),
                                    name="insight_report_segment"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} · {self.segment or self.store}"
