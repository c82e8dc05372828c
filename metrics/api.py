"""Metrics over the API: snapshot series, compare, insights, journeys, campaigns, daily runs.

Segment- and store-level reads are actions mixed into the segment and store viewsets
(``ecpower/api/urls.py`` composes them), so they inherit their store scoping: an object of another
store is a 404. Journeys, campaigns and daily runs are viewsets of their own.
"""

from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.utils.http import http_date
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from ecpower.api.framework import StoreBoundSerializer, StoreScopedMixin, StoreWriteCheckedMixin
from ecpower.commerce.models import Store
from integrations.api import SyncJobSerializer
from metrics import charts, insight_reports, insights
from metrics.models import Campaign, InsightKind, Journey, JourneyStage, PipelineRun, SegmentSnapshot
from segments.models import Segment

DATE_PARAMS = [OpenApiParameter("since", dt.date, description="First day (store time)."),
               OpenApiParameter("until", dt.date, description="Last day (store time).")]


def _date(request, name: str) -> dt.date | None:
    value = request.query_params.get(name)
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValidationError({name: [f"{value!r} is not a date (YYYY-MM-DD)."]}) from None


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = SegmentSnapshot
        fields = ("date", "period_days", "members", "joined", "left", "orders", "revenue", "buyers", "repeat_rate",
                  "ltv", "aov_customer", "aov_order", "avg_orders", "purchase_interval_days", "approximate", "source")
        read_only_fields = fields


class BackfillRequestSerializer(serializers.Serializer):
    since = serializers.DateField(required=False, allow_null=True,
                                  help_text="First day (default: the first order, at most two years back).")


class PopularTagSerializer(serializers.Serializer):
    name = serializers.CharField()
    members = serializers.IntegerField()
    share = serializers.DecimalField(max_digits=7, decimal_places=4, allow_null=True)
    store_customers = serializers.IntegerField()
    store_share = serializers.DecimalField(max_digits=7, decimal_places=4, allow_null=True)
    lift = serializers.DecimalField(max_digits=10, decimal_places=2, allow_null=True)


class ProductRowSerializer(serializers.Serializer):
    name = serializers.CharField()
    orders = serializers.IntegerField()
    buyers = serializers.IntegerField()
    units = serializers.IntegerField()
    revenue = serializers.DecimalField(max_digits=16, decimal_places=2)


class TopProductsSerializer(serializers.Serializer):
    products = ProductRowSerializer(many=True)
    product_types = ProductRowSerializer(many=True)
    members = serializers.IntegerField()
    sampled_members = serializers.IntegerField(
        allow_null=True, help_text="Set when the figures are estimated: the members drawn at random and read; every "
                                   "figure is theirs times members ÷ sampled_members, rounded. Null: every member "
                                   f"was read. Segments of more than {insights.PRODUCTS_SAMPLE_ABOVE:,} members are "
                                   "sampled unless exact=true.")


class CompareSerializer(serializers.Serializer):
    kpi = serializers.CharField()
    labels = serializers.ListField(child=serializers.DateField())
    series = serializers.DictField(child=serializers.ListField(child=serializers.FloatField(allow_null=True)),
                                   help_text="Segment slug → one value per label (null where it has none).")


class SegmentMetricsActions:
    """Detail actions of /segments/{id}/: history, its rebuild, popular tags, products; and compare."""

    @extend_schema(parameters=DATE_PARAMS, responses=SnapshotSerializer(many=True))
    @action(detail=True, methods=["get"])
    def snapshots(self, request, pk=None):
        """One row per day (weekly for the older part of a long backfill) with every KPI."""
        segment = self.get_object()
        rows = SegmentSnapshot.objects.filter(segment=segment).order_by("date")
        since, until = _date(request, "since"), _date(request, "until")
        if since:
            rows = rows.filter(date__gte=since)
        if until:
            rows = rows.filter(date__lte=until)
        return Response(SnapshotSerializer(rows, many=True).data)

    @extend_schema(request=BackfillRequestSerializer, responses={202: SyncJobSerializer})
    @action(detail=True, methods=["post"])
    def backfill(self, request, pk=None):
        """Rebuild the segment's history from order and tag history, as a job with progress."""
        from metrics.tasks import backfill_start

        segment = self.get_object()
        params = BackfillRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        user = request.user if getattr(request.user, "pk", None) else None
        job = backfill_start(store=segment.store, segment=segment, since=params.validated_data.get("since"),
                             user=user)
        return Response(SyncJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=PopularTagSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="popular-tags")
    def popular_tags(self, request, pk=None):
        """The top 100 customer tags of members, with their share in the segment and in the store."""
        return Response(PopularTagSerializer(insights.popular_tags(self.get_object()), many=True).data)

    @extend_schema(parameters=[OpenApiParameter(
        "exact", bool, default=False,
        description=f"Read every member's lines even for a segment of more than {insights.PRODUCTS_SAMPLE_ABOVE:,} "
                    "members (slower).")],
        responses=TopProductsSerializer)
    @action(detail=True, methods=["get"], url_path="top-products")
    def top_products(self, request, pk=None):
        """Products and product types members bought (counted orders), by revenue; a large segment's estimated
        from a random sample of its members (``sampled_members``)."""
        exact = request.query_params.get("exact", "").lower() in ("1", "true", "yes")
        found = insights.segment_products(self.get_object(), exact=exact)
        products = [{**r, "name": r["product_name"]} for r in found.products]
        types = [{**r, "name": r["type_name"] or ""} for r in found.types]
        return Response(TopProductsSerializer({"products": products, "product_types": types, "members": found.members,
                                               "sampled_members": found.sampled}).data)

    @extend_schema(responses=inline_serializer("PartnerAttributes", {
        "attributes": serializers.DictField(child=serializers.ListField(child=inline_serializer("AttributeValue", {
            "value": serializers.CharField(), "members": serializers.IntegerField(),
            "store_customers": serializers.IntegerField()})))}))
    @action(detail=True, methods=["get"])
    def attributes(self, request, pk=None):
        """Members per value of each partner attribute (AiTrillion tier, plan …) read by the tag mappings."""
        from integrations.aitrillion.mappings import attribute_distribution

        segment = self.get_object()
        in_store = {attribute: dict(rows) for attribute, rows in attribute_distribution(store=segment.store).items()}
        return Response({"attributes": {
            attribute: [{"value": v, "members": n, "store_customers": in_store.get(attribute, {}).get(v, 0)}
                        for v, n in rows]
            for attribute, rows in attribute_distribution(store=segment.store, segment=segment).items()}})

    @extend_schema(parameters=[OpenApiParameter("ids", str, required=True, description="Segment ids, comma separated."),
                               OpenApiParameter("kpi", str, enum=list(charts.KPIS), default="members"), *DATE_PARAMS],
                   responses=CompareSerializer)
    @action(detail=False, methods=["get"])
    def compare(self, request):
        """One KPI of several segments (of one store) side by side, day by day."""
        ids = [int(i) for i in request.query_params.get("ids", "").split(",") if i.strip().isdigit()]
        segments = list(self.get_queryset().filter(pk__in=ids).order_by("name"))
        if not segments or len(segments) != len(set(ids)):
            raise NotFound()
        if len({s.store_id for s in segments}) > 1:
            raise ValidationError({"ids": ["Compare segments of one store at a time."]})
        kpi = request.query_params.get("kpi", "members")
        if kpi not in charts.KPIS:
            raise ValidationError({"kpi": [f"Choose one of {', '.join(charts.KPIS)}."]})
        chart = charts.compare_chart(segments, kpi, _date(request, "since"), _date(request, "until"))
        series = {s.slug: d["data"] for s, d in zip(segments, chart["charts"][0]["datasets"], strict=True)}
        return Response(CompareSerializer({"kpi": kpi, "labels": chart["labels"], "series": series}).data)


def _text(value):
    """Decimals as strings, like every other decimal field of the API."""
    from decimal import Decimal

    return str(value) if isinstance(value, Decimal) else value


def _segment_param(request, store: Store) -> Segment | None:
    value = request.query_params.get("segment")
    if not value:
        return None
    segment = Segment.objects.filter(store=store, pk=value if str(value).isdigit() else None).first()
    if segment is None:
        raise NotFound()
    return segment


def _kept_dated(response: Response, kept) -> Response:
    """A kept table's answer says when it was computed (``Last-Modified``)."""
    if kept is not None:
        response["Last-Modified"] = http_date(kept.computed_at.timestamp())
    return response


COHORT_SCHEMA = inline_serializer("Cohort", {
    "month": serializers.DateField(), "customers": serializers.IntegerField(),
    "cells": serializers.ListField(child=inline_serializer("CohortCell", {
        "offset": serializers.IntegerField(), "ltv": serializers.DecimalField(max_digits=16, decimal_places=2),
        "repeat_rate": serializers.DecimalField(max_digits=7, decimal_places=4),
        "orders_per_customer": serializers.DecimalField(max_digits=10, decimal_places=2)}))}, many=True)
RFM_SCHEMA = inline_serializer("RfmSummary", {
    "customers": serializers.IntegerField(),
    "groups": serializers.ListField(child=inline_serializer("RfmGroup", {
        "group": serializers.CharField(), "label": serializers.CharField(), "customers": serializers.IntegerField(),
        "share": serializers.DecimalField(max_digits=7, decimal_places=4, allow_null=True),
        "orders": serializers.IntegerField(), "spent": serializers.DecimalField(max_digits=16, decimal_places=2),
        "avg_days_since_last_order": serializers.FloatField(allow_null=True)})),
    "grid": serializers.DictField(child=serializers.ListField(child=serializers.IntegerField()),
                                  help_text="FM (5 … 1) → customers for R = 1 … 5."),
})
SEGMENT_PARAM = OpenApiParameter("segment", int, description="Only this segment's members.")


MOVEMENT_SCHEMA = inline_serializer("AttributeMovement", {
    "attribute": serializers.CharField(), "start": serializers.DateTimeField(), "end": serializers.DateTimeField(),
    "moves": serializers.ListField(child=inline_serializer("AttributeMove", {
        "source": serializers.CharField(allow_null=True, help_text="The value before; null: none."),
        "target": serializers.CharField(allow_null=True, help_text="The value after; null: none."),
        "customers": serializers.IntegerField()}))})


class StoreMovementActions:
    @extend_schema(parameters=[
        OpenApiParameter("attribute", str, enum=["loyalty_tier", "membership_plan", "affiliate_group",
                                                 "signup_source"], default="loyalty_tier"),
        OpenApiParameter("start", dt.date, description="Default: 7 days before end."),
        OpenApiParameter("end", dt.date, description="Default: today (store time)."),
    ], responses=MOVEMENT_SCHEMA)
    @action(detail=True, methods=["get"], url_path="tier-movement")
    def tier_movement(self, request, pk=None):
        """How many customers moved from each value of a mapped attribute to each other one (tag history)."""
        from integrations.aitrillion.mappings import ATTRIBUTES, attribute_movement
        from segments.selectors import store_today

        store = self.get_object()
        attribute = request.query_params.get("attribute", "loyalty_tier")
        if attribute not in ATTRIBUTES:
            raise ValidationError({"attribute": [f"Choose one of {', '.join(ATTRIBUTES)}."]})
        end = _date(request, "end") or store_today(store)
        start = _date(request, "start") or end - dt.timedelta(days=7)
        movement = attribute_movement(
            store=store, attribute=attribute,
            start=dt.datetime.combine(start, dt.time.min, tzinfo=store.zone),
            end=dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=store.zone))
        moves = [{"source": a, "target": b, "customers": n}
                 for (a, b), n in sorted(movement.moves.items(), key=lambda item: -item[1])]
        return Response({"attribute": attribute, "start": movement.start, "end": movement.end, "moves": moves})


class StoreMetricsActions(StoreMovementActions):
    """Detail actions of /stores/{id}/: cohorts and RFM, of the store or of one segment; tier movement."""

    @extend_schema(parameters=[SEGMENT_PARAM, OpenApiParameter("months", int, default=12)], responses=COHORT_SCHEMA)
    @action(detail=True, methods=["get"])
    def cohorts(self, request, pk=None):
        """First-purchase-month cohorts: cumulative LTV, repeat rate and orders per customer by month since.

        On a store of more than `ECPOWER_INSIGHTS_KEPT_ABOVE` customers (200,000 by default; or a segment of more
        members), with the default 12 months, the table kept today is the answer when there is one (computed after
        the daily run; its `Last-Modified` header says when); otherwise it is computed for the request.
        """
        store = self.get_object()
        segment = _segment_param(request, store)
        months = min(max(int(request.query_params.get("months", 12) or 12), 1), 36)
        kept = None
        if months == insight_reports.COHORT_MONTHS:
            kept = insight_reports.insight_report_today(store, segment, InsightKind.COHORTS)
        rows = insight_reports.cohorts_kept(kept) if kept else insights.cohorts(store, segment, months=months)
        return _kept_dated(Response([{"month": c.month, "customers": c.customers,
                                      "cells": [{k: _text(v) for k, v in cell.items()} for cell in c.cells]}
                                     for c in rows]), kept)

    @extend_schema(parameters=[SEGMENT_PARAM], responses=RFM_SCHEMA)
    @action(detail=True, methods=["get"])
    def rfm(self, request, pk=None):
        """Customers per RFM group (Shopify's eleven) and per R × FM cell, now.

        On a store of more than `ECPOWER_INSIGHTS_KEPT_ABOVE` customers (or a segment of more members), the table
        kept today when there is one (its `Last-Modified` header says when it was computed), as for cohorts.
        """
        store = self.get_object()
        segment = _segment_param(request, store)
        kept = insight_reports.insight_report_today(store, segment, InsightKind.RFM)
        summary = insight_reports.rfm_kept(kept) if kept else insights.rfm_summary(store, segment)
        groups = [{k: _text(v) for k, v in group.items()} for group in summary.groups]
        return _kept_dated(Response({"customers": summary.customers, "groups": groups,
                                     "grid": {str(fm): cells for fm, cells in summary.grid.items()}}), kept)



# --- journeys, campaigns, daily runs -----------------------------------------------------------------


class JourneySerializer(StoreBoundSerializer):
    segment_fields = ("stages",)
    stages = serializers.PrimaryKeyRelatedField(
        many=True, queryset=Segment.objects.all(), source="stage_segments",
        help_text="Segment ids in order: the journey's stages.")

    class Meta:
        model = Journey
        fields = ("id", "store", "name", "description", "stages", "created_at")
        read_only_fields = ("created_at",)

    def to_representation(self, instance):
        instance.stage_segments = [stage.segment for stage in instance.stages.select_related("segment")]
        return super().to_representation(instance)

    def validate(self, data):
        store = data.get("store") or self.instance.store
        self.check_segments(store, data.get("stage_segments", []), "stages")
        return data

    @transaction.atomic
    def create(self, data):
        stages = data.pop("stage_segments", [])
        journey = Journey.objects.create(**data)
        self._stages(journey, stages)
        return journey

    @transaction.atomic
    def update(self, journey, data):
        stages = data.pop("stage_segments", None)
        for name, value in data.items():
            setattr(journey, name, value)
        journey.save()
        if stages is not None:
            journey.stages.all().delete()
            self._stages(journey, stages)
        return journey

    @staticmethod
    def _stages(journey: Journey, segments: list[Segment]) -> None:
        JourneyStage.objects.bulk_create(
            [JourneyStage(journey=journey, segment=s, position=i) for i, s in enumerate(segments)])


class TransitionsSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    members = serializers.DictField(child=serializers.IntegerField(), help_text="Stage segment id → members now.")
    moves = serializers.ListField(child=inline_serializer("JourneyMove", {
        "source": serializers.CharField(help_text="A stage's segment id, or outside."),
        "target": serializers.CharField(help_text="A stage's segment id, or outside."),
        "customers": serializers.IntegerField()}))


class JourneyViewSet(StoreScopedMixin, StoreWriteCheckedMixin, viewsets.ModelViewSet):
    """Ordered stages customers move through; transitions between them over any window."""

    queryset = Journey.objects.select_related("store")
    serializer_class = JourneySerializer
    filterset_fields = ("store",)
    ordering = ("-id",)

    @extend_schema(parameters=[OpenApiParameter("start", dt.date, description="Default: 6 days before end."),
                               OpenApiParameter("end", dt.date, description="Default: today (store time).")],
                   responses=TransitionsSerializer)
    @action(detail=True, methods=["get"])
    def transitions(self, request, pk=None):
        """Customers who moved between stages in [start, end] (default: the last 7 days), and members now."""
        report = insights.journey_transitions(self.get_object(), _date(request, "start"), _date(request, "end"))
        moves = [{"source": str(source), "target": str(target), "customers": count}
                 for (source, target), count in sorted(report.moves.items(), key=str)]
        return Response(TransitionsSerializer({"start": report.start, "end": report.end,
                                               "members": {str(k): v for k, v in report.members.items()},
                                               "moves": moves}).data)


class CampaignSerializer(StoreBoundSerializer):
    segment_fields = ("segments",)
    segments = serializers.PrimaryKeyRelatedField(many=True, queryset=Segment.objects.all())

    class Meta:
        model = Campaign
        fields = ("id", "store", "name", "segments", "starts_on", "ends_on", "created_at")
        read_only_fields = ("created_at",)

    def validate(self, data):
        store = data.get("store") or self.instance.store
        self.check_segments(store, data.get("segments", []), "segments")
        starts, ends = data.get("starts_on", getattr(self.instance, "starts_on", None)), data.get(
            "ends_on", getattr(self.instance, "ends_on", None))
        if starts and ends and ends < starts:
            raise ValidationError({"ends_on": ["The last day is before the first day."]})
        return data


GROUP_SCHEMA = inline_serializer("CampaignGroup", {
    "customers": serializers.IntegerField(), "buyers": serializers.IntegerField(),
    "orders": serializers.IntegerField(), "revenue": serializers.DecimalField(max_digits=16, decimal_places=2),
    "conversion": serializers.FloatField(allow_null=True), "revenue_per_member": serializers.FloatField(allow_null=True)})
INTERVAL = serializers.ListField(child=serializers.FloatField(), allow_null=True, min_length=2, max_length=2)
RESULT_SCHEMA = inline_serializer("CampaignResult", {
    "segment": serializers.IntegerField(), "slug": serializers.CharField(), "start": serializers.DateField(),
    "end": serializers.DateField(), "targets": GROUP_SCHEMA, "holdout": GROUP_SCHEMA,
    "conversion_difference": serializers.FloatField(allow_null=True), "conversion_interval": INTERVAL,
    "conversion_lift": serializers.FloatField(allow_null=True),
    "revenue_per_member_difference": serializers.FloatField(allow_null=True),
    "revenue_per_member_interval": INTERVAL, "revenue_per_member_lift": serializers.FloatField(allow_null=True),
    "incremental_revenue": serializers.FloatField(allow_null=True)}, many=True)


class CampaignViewSet(StoreScopedMixin, StoreWriteCheckedMixin, viewsets.ModelViewSet):
    """List segments and a period, measured against their holdouts."""

    queryset = Campaign.objects.select_related("store").prefetch_related("segments")
    serializer_class = CampaignSerializer
    filterset_fields = ("store",)
    ordering = ("-id",)

    @extend_schema(responses=RESULT_SCHEMA)
    @action(detail=True, methods=["get"])
    def results(self, request, pk=None):
        """Per segment: targets and holdout, the differences with a 95 % interval, and the lift."""
        campaign = self.get_object()
        return Response([insights.campaign_results(s, campaign.starts_on, campaign.ends_on).as_dict()
                         for s in campaign.segments.order_by("name")])


class PipelineRunSerializer(serializers.ModelSerializer):
    jobs = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = PipelineRun
        fields = ("id", "store", "date", "status", "step", "summary", "error", "started_at", "finished_at", "jobs")
        read_only_fields = fields


class PipelineRunViewSet(StoreScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                         viewsets.GenericViewSet):
    """Each store's daily runs and the outcome of every step (the jobs are under /sync-jobs/)."""

    queryset = PipelineRun.objects.prefetch_related("jobs")
    serializer_class = PipelineRunSerializer
    filterset_fields = ("store", "status", "date")
    ordering = ("-id",)
