"""Segments: who belongs where, since when, and how each definition changed.

A condition segment stores a rule tree (``segments.rules``, documented in docs/segments.md) and
its text form; recompute (``segments.services``) turns it into ``Membership`` rows and records
each join and leave as a ``MembershipEvent``. Models hold fields and constraints only.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from ecpower.commerce.models import Customer, Store


class SegmentKind(models.TextChoices):
    CONDITION = "condition", _("Condition segment")
    LIST = "list", _("List segment")


class SegmentStatus(models.TextChoices):
    NEW = "new", _("Not computed yet")
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Computing")
    SUCCEEDED = "succeeded", _("Up to date")
    FAILED = "failed", _("Failed")


class ListOrigin(models.TextChoices):
    QUERY = "query", _("Query")
    SNAPSHOT = "snapshot", _("Snapshot of a segment")
    EXPRESSION = "expression", _("Set expression")
    CSV = "csv", _("CSV upload")


class SegmentGroup(models.Model):
    """A folder a segment can belong to (several at once), e.g. "RFM" or "first product"."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="segment_groups", verbose_name=_("store"))
    name = models.CharField(_("name"), max_length=200)

    class Meta:
        verbose_name = _("segment group")
        verbose_name_plural = _("segment groups")
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["store", "name"], name="segment_group_unique_name")]

    def __str__(self) -> str:
        return self.name


class Segment(models.Model):
    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="segments", verbose_name=_("store"))
    name = models.CharField(_("name"), max_length=200)
    slug = models.SlugField(_("slug"), max_length=100, allow_unicode=False)
    description = models.TextField(_("description"), blank=True)
    kind = models.CharField(_("kind"), max_length=10, choices=SegmentKind.choices, default=SegmentKind.CONDITION)
    rule = models.JSONField(_("rule"), null=True, blank=True, help_text=_("The rule tree (docs/segments.md)."))
    query = models.TextField(_("query"), blank=True, help_text=_("The rule in the query language."))
    shopify_tag = models.CharField(
        _("Shopify tag"), max_length=255, blank=True, help_text=_("Customer tag this segment writes to Shopify.")
    )
    groups = models.ManyToManyField(SegmentGroup, blank=True, related_name="segments", verbose_name=_("groups"))

    status = models.CharField(_("status"), max_length=10, choices=SegmentStatus.choices, default=SegmentStatus.NEW)
    computing_started_at = models.DateTimeField(_("computing since"), null=True, blank=True)
    last_computed_at = models.DateTimeField(_("last computed at"), null=True, blank=True)
    last_computed_for = models.DateField(_("computed as of"), null=True, blank=True)
    member_count = models.PositiveIntegerField(_("members"), default=0)
    last_joined = models.PositiveIntegerField(_("joined in last run"), default=0)
    last_left = models.PositiveIntegerField(_("left in last run"), default=0)
    last_duration_ms = models.PositiveIntegerField(_("last duration (ms)"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    baseline = models.PositiveIntegerField(
        _("baseline"), default=0, editable=False,
        help_text=_("The number of the store's recompute ChangeBaseline its members were last computed "
                    "from; any other makes the next daily recompute evaluate every customer."))

    # List segments only: where the members came from, and the held-out share.
    list_origin = models.CharField(_("made from"), max_length=10, choices=ListOrigin.choices, blank=True)
    expression = models.TextField(
        _("set expression"), blank=True, help_text=_("For lists made by combining segments, e.g. (vip | line) - unsub.")
    )
    source_segments = models.ManyToManyField(
        "self", symmetrical=False, blank=True, related_name="derived_lists", verbose_name=_("made from segments")
    )
    as_of = models.DateField(_("evaluated as of"), null=True, blank=True)
    holdout_percent = models.DecimalField(_("holdout %"), max_digits=5, decimal_places=2, null=True, blank=True)
    holdout_seed = models.BigIntegerField(_("holdout seed"), null=True, blank=True)
    holdout_count = models.PositiveIntegerField(_("held out"), default=0)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, verbose_name=_("created by")
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("segment")
        verbose_name_plural = _("segments")
        ordering = ["store", "name"]
        constraints = [models.UniqueConstraint(fields=["store", "slug"], name="segment_unique_slug_per_store")]

    def __str__(self) -> str:
        return self.name


class _KindManager(models.Manager):
    kind = ""

    def get_queryset(self):
        return super().get_queryset().filter(kind=self.kind)


class ConditionSegmentManager(_KindManager):
    kind = SegmentKind.CONDITION


class ListSegmentManager(_KindManager):
    kind = SegmentKind.LIST


class ConditionSegment(Segment):
    objects = ConditionSegmentManager()

    class Meta:
        proxy = True
        verbose_name = _("condition segment")
        verbose_name_plural = _("condition segments")


class ListSegment(Segment):
    objects = ListSegmentManager()

    class Meta:
        proxy = True
        verbose_name = _("list segment")
        verbose_name_plural = _("list segments")


class SegmentVersion(models.Model):
    """One saved definition of a segment: every change of its rule keeps the previous ones."""

    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="versions", verbose_name=_("segment"))
    number = models.PositiveIntegerField(_("version"))
    rule = models.JSONField(_("rule"))
    query = models.TextField(_("query"), blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, verbose_name=_("changed by")
    )
    created_at = models.DateTimeField(_("changed at"), auto_now_add=True)

    class Meta:
        verbose_name = _("segment version")
        verbose_name_plural = _("segment versions")
        ordering = ["segment", "-number"]
        constraints = [models.UniqueConstraint(fields=["segment", "number"], name="segment_version_unique_number")]

    def __str__(self) -> str:
        return f"{self.segment} v{self.number}"


# Membership and its events are the largest tables (members × segments) and are written in bulk on
# every recompute. They keep only the indexes a named query uses (Meta below), and none of their
# references is checked by the database: each checked reference costs a deferred trigger per inserted
# row, run when the transaction commits (the store and customer checks were a third of a first
# recompute at 100k customers; the segment check, the last one, half of writing the 6.3 M memberships
# and join events of a first recompute at 1M, docs/performance.md). Django still cascades deletes of
# segments, customers and stores to them, and store_data_delete removes them before the customers.
UNCHECKED = {"db_constraint": False, "db_index": False}


def _through_segments(sub_objs, field):
    """The rows of ``sub_objs`` looked up through the segments of their customer's store."""
    return sub_objs.filter(segment__store_id=models.F(f"{field.name}__store_id"))


def CASCADE_THROUGH_SEGMENTS(collector, field, sub_objs, using):
    """``models.CASCADE`` for a deleted customer's memberships, join/leave events and snapshot members,
    looked up through the segments of the customer's store: memberships and snapshot members by one probe of their
    (segment, customer) index per segment instead of a scan of every store's rows. The events have no such index
    (each join or leave would write a random page of it): their deletion reads them (docs/performance.md)."""
    models.CASCADE(collector, field, _through_segments(sub_objs, field), using)


CASCADE_THROUGH_SEGMENTS.lazy_sub_objs = True  # the collector would otherwise read sub_objs (that scan) first
CASCADE_THROUGH_SEGMENTS.narrow = _through_segments  # how the admin's counted delete pages find the same rows


class Membership(models.Model):
    # Keyed by (segment, customer), the index every query of the table uses: a surrogate id would be one more
    # index and sequence value per row, a sixth of a first recompute at 1M customers (docs/performance.md).
    pk = models.CompositePrimaryKey("segment", "customer")
    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"),
                              **UNCHECKED)
    # The primary key (membership_unique on PostgreSQL) is the index of recompute's diff, of in_segment('slug')
    # conditions and of "which segments is this customer in" (segments.selectors.customer_memberships: one
    # probe per segment of the store). Indexes on the customer alone, here and on the events, cost a first
    # recompute 7 s of 39 s at 1M customers (docs/performance.md).
    segment = models.ForeignKey(  # first in the primary key
        Segment, on_delete=models.CASCADE, related_name="memberships", verbose_name=_("segment"), **UNCHECKED
    )
    customer = models.ForeignKey(  # after the segment in the primary key
        Customer, on_delete=CASCADE_THROUGH_SEGMENTS, related_name="memberships", verbose_name=_("customer"),
        **UNCHECKED
    )
    since = models.DateField(_("member since"))
    # Held out of a list's campaign (measured, never tagged). db_default: recompute inserts with raw SQL.
    holdout = models.BooleanField(_("held out"), default=False, db_default=False)

    class Meta:
        verbose_name = _("membership")
        verbose_name_plural = _("memberships")

    def __str__(self) -> str:
        return f"{self.customer_id} ∈ {self.segment_id}"


class ChangePurpose(models.TextChoices):
    RECOMPUTE = "recompute", _("Daily recompute")
    SNAPSHOTS = "snapshots", _("Daily snapshots")


class ChangeBaseline(models.Model):
    """What a store's kept verdicts were computed from, so the next run evaluates only the customers
    who may have changed since (``segments.changes``): with ``CustomerDigest`` per customer, the newest
    tag event then, and a digest of what every customer's rule reads (catalogue, tag mappings, the
    start of the tag history)."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"))
    purpose = models.CharField(_("purpose"), max_length=10, choices=ChangePurpose.choices)
    number = models.PositiveIntegerField(_("number"), default=0, help_text=_("Raised at every capture."))
    tag_event_id = models.BigIntegerField(_("newest tag event"), default=0)
    catalogue = models.CharField(_("catalogue digest"), max_length=64, blank=True)
    captured_at = models.DateTimeField(_("captured at"))

    class Meta:
        verbose_name = _("change baseline")
        verbose_name_plural = _("change baselines")
        constraints = [models.UniqueConstraint(fields=["store", "purpose"], name="change_baseline_unique")]

    def __str__(self) -> str:
        return f"{self.store_id} {self.purpose} #{self.number}"


class CustomerDigest(models.Model):
    """A digest of the customer columns rules read, as a ``ChangeBaseline`` saw them."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"),
                              **UNCHECKED)
    purpose = models.CharField(_("purpose"), max_length=10, choices=ChangePurpose.choices)
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="+", verbose_name=_("customer"),
                                 **UNCHECKED)
    digest = models.CharField(_("digest"), max_length=64)

    class Meta:
        verbose_name = _("customer digest")
        verbose_name_plural = _("customer digests")
        constraints = [
            # Also the index of the comparison with today's digests.
            models.UniqueConstraint(fields=["store", "purpose", "customer"], name="customer_digest_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id}: {self.digest}"


class MembershipEventKind(models.TextChoices):
    JOINED = "joined", _("Joined")
    LEFT = "left", _("Left")


class MembershipEvent(models.Model):
    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"),
                              **UNCHECKED)
    segment = models.ForeignKey(  # indexed by membership_event_seg_recent
        Segment, on_delete=models.CASCADE, related_name="membership_events", verbose_name=_("segment"),
        **UNCHECKED,
    )
    # No index by (segment, customer) or by customer: it takes each join or leave on a random page (the one
    # by segment and date grows at its end), 0.4-0.5 s of an incremental update after 10,000 orders at 1M
    # customers (docs/performance.md). Journeys read the events by segment and date; a deleted customer's
    # are found by reading the events of the store's segments.
    customer = models.ForeignKey(
        Customer, on_delete=CASCADE_THROUGH_SEGMENTS, related_name="membership_events", verbose_name=_("customer"),
        **UNCHECKED
    )
    kind = models.CharField(_("event"), max_length=6, choices=MembershipEventKind.choices)
    date = models.DateField(_("date"), help_text=_("The evaluation date, in the store's time zone."))
    created_at = models.DateTimeField(_("recorded at"), auto_now_add=True)

    class Meta:
        verbose_name = _("membership event")
        verbose_name_plural = _("membership events")
        indexes = [
            # Recent joins and leaves of a segment, newest first (segment_recent_events: read backwards, so the
            # page stops after 20; with the date alone it sorted all 600,000 events of a first recompute by id,
            # 4.4 s at a million customers); daily joined/left counts for snapshots.
            models.Index(fields=["segment", "date", "id"], name="membership_event_seg_recent"),
        ]

    def __str__(self) -> str:  # the admin's title of one event: who, what, where, when
        return f"{self.customer} · {self.get_kind_display()} · {self.segment} · {self.date}"


class ListUpload(models.Model):
    """The CSV file a list was made from and its match report."""

    segment = models.OneToOneField(Segment, on_delete=models.CASCADE, related_name="upload",
                                   verbose_name=_("list"))
    file_name = models.CharField(_("file name"), max_length=255)
    size_bytes = models.PositiveBigIntegerField(_("size (bytes)"))
    encoding = models.CharField(_("encoding"), max_length=20)
    column = models.CharField(_("column"), max_length=255, help_text=_("The column the identifiers were read from."))
    has_header = models.BooleanField(_("has a header row"))
    rows = models.PositiveIntegerField(_("rows"), help_text=_("Non-blank data rows."))
    blank_rows = models.PositiveIntegerField(_("blank rows"), default=0)
    matched = models.PositiveIntegerField(_("matched"))
    # [[line, value, reason], …] and [[line, value, first line], …]: the downloadable parts of the report.
    unmatched = models.JSONField(_("unmatched rows"), default=list)
    duplicates = models.JSONField(_("duplicate rows"), default=list)

    class Meta:
        verbose_name = _("list upload")
        verbose_name_plural = _("list uploads")

    def __str__(self) -> str:
        return self.file_name
