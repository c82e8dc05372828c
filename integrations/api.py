"""Sync jobs over the API: start imports and tag syncs, follow their progress."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response

from ecpower.api.framework import (
    StoreBoundSerializer,
    StoreScopedMixin,
    StoreWriteCheckedMixin,
    request_can_write,
    request_stores,
)
from ecpower.commerce.models import Store
from integrations.http import PartnerError
from integrations.jobs import import_start, tag_sync_start
from integrations.models import (
    ChannelTalkConnection,
    MatchKind,
    OutboundEvent,
    SyncJob,
    SyncJobKind,
    TagMapping,
    WebhookEndpoint,
    WebhookMessage,
)
from segments.models import Segment


class SyncJobSerializer(serializers.ModelSerializer):
    percent = serializers.IntegerField(read_only=True)

    class Meta:
        model = SyncJob
        fields = ("id", "store", "kind", "segment", "status", "dry_run", "stage", "total", "done", "failed",
                  "percent", "summary", "error", "created_at", "started_at", "finished_at")
        read_only_fields = fields


# Jobs a user or partner starts; the other kinds are steps of the daily run.
STARTABLE = (SyncJobKind.IMPORT_FULL, SyncJobKind.IMPORT_CHANGES, SyncJobKind.TAG_SYNC, SyncJobKind.TAG_REMOVE,
             SyncJobKind.METRICS_BACKFILL)


class SyncJobStartSerializer(serializers.Serializer):
    store = serializers.PrimaryKeyRelatedField(queryset=Store.objects.none())
    kind = serializers.ChoiceField(choices=[(k, SyncJobKind(k).label) for k in STARTABLE])
    segment = serializers.PrimaryKeyRelatedField(
        queryset=Segment.objects.none(), required=False, allow_null=True,
        help_text="For tag_sync and tag_remove; for metrics_backfill, only this segment (default: every segment "
                  "whose history is missing or out of date).")
    dry_run = serializers.BooleanField(default=False, help_text="Tag jobs: count and sample the changes only.")
    native_segment = serializers.BooleanField(default=False,
                                              help_text="tag_sync: also create a Shopify segment for the tag.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            stores = request_stores(request)
            self.fields["store"].queryset = stores
            self.fields["segment"].queryset = Segment.objects.filter(store__in=stores)

    def validate(self, data):
        tag_job = data["kind"] in (SyncJobKind.TAG_SYNC, SyncJobKind.TAG_REMOVE)
        if tag_job and not data.get("segment"):
            raise serializers.ValidationError({"segment": ["A tag job needs the segment."]})
        if data.get("segment") and data["segment"].store_id != data["store"].pk:
            raise serializers.ValidationError({"segment": ["The segment belongs to another store."]})
        return data


def start_job(request, data: dict) -> SyncJob:
    user = request.user if getattr(request.user, "pk", None) else None
    if not request_can_write(request, data["store"].pk):
        raise PermissionDenied()
    try:
        if data["kind"] == SyncJobKind.METRICS_BACKFILL:
            from metrics.tasks import backfill_start

            return backfill_start(store=data["store"], segment=data.get("segment"), user=user)
        if data["kind"] in (SyncJobKind.IMPORT_FULL, SyncJobKind.IMPORT_CHANGES):
            return import_start(store=data["store"], full=data["kind"] == SyncJobKind.IMPORT_FULL, user=user)
        return tag_sync_start(segment=data["segment"], user=user, dry_run=data.get("dry_run", False),
                              remove=data["kind"] == SyncJobKind.TAG_REMOVE,
                              native_segment=data.get("native_segment", False))
    except PartnerError as exc:
        raise serializers.ValidationError({"kind": [str(exc)]}) from exc


class SyncJobViewSet(StoreScopedMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Imports, tag syncs, backfills and the steps of daily runs. POST starts one (an unfinished job of the same
    kind is returned instead)."""

    queryset = SyncJob.objects.all()
    serializer_class = SyncJobSerializer
    filterset_fields = ("store", "kind", "status", "segment", "dry_run")
    ordering_fields = ("id", "created_at")
    ordering = ("-id",)

    @extend_schema(request=SyncJobStartSerializer, responses={202: SyncJobSerializer})
    def create(self, request, *args, **kwargs):
        params = SyncJobStartSerializer(data=request.data, context={"request": request})
        params.is_valid(raise_exception=True)
        job = start_job(request, params.validated_data)
        return Response(SyncJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


# --- partner webhooks --------------------------------------------------------------------------------


class WebhookEndpointSerializer(StoreBoundSerializer):
    events = serializers.ListField(child=serializers.ChoiceField(choices=OutboundEvent.choices), min_length=1)

    class Meta:
        model = WebhookEndpoint
        fields = ("id", "store", "name", "url", "events", "paused_at", "pause_reason", "consecutive_failures",
                  "created_at")
        read_only_fields = ("paused_at", "pause_reason", "consecutive_failures", "created_at")

    def validate_url(self, url):
        from django.core.exceptions import ValidationError as DjangoValidationError

        from integrations.outbound import check_url

        try:
            check_url(url)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict["url"]) from exc
        return url


class WebhookEndpointCreatedSerializer(WebhookEndpointSerializer):
    secret = serializers.CharField(read_only=True, help_text="The signing secret: shown only in this answer.")

    class Meta(WebhookEndpointSerializer.Meta):
        fields = (*WebhookEndpointSerializer.Meta.fields, "secret")


class WebhookMessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookMessage
        fields = ("id", "event", "delivery_id", "status", "attempts", "next_attempt_at", "last_error", "created_at",
                  "delivered_at", "payload")
        read_only_fields = fields


class WebhookEndpointViewSet(StoreScopedMixin, viewsets.ModelViewSet):
    """Partner endpoints for signed events (docs/webhooks.md). The secret is returned once, on create."""

    queryset = WebhookEndpoint.objects.select_related("store")
    serializer_class = WebhookEndpointSerializer
    filterset_fields = ("store",)
    ordering = ("-id",)

    @extend_schema(request=WebhookEndpointSerializer, responses={201: WebhookEndpointCreatedSerializer})
    def create(self, request, *args, **kwargs):
        from integrations.outbound import webhook_endpoint_create

        params = WebhookEndpointSerializer(data=request.data, context={"request": request})
        params.is_valid(raise_exception=True)
        data = params.validated_data
        if not request_can_write(request, data["store"].pk):
            raise PermissionDenied()
        endpoint, secret = webhook_endpoint_create(store=data["store"], name=data["name"], url=data["url"],
                                                   events=data["events"])
        endpoint.secret = secret
        return Response(WebhookEndpointCreatedSerializer(endpoint, context={"request": request}).data,
                        status=status.HTTP_201_CREATED)

    def perform_update(self, serializer):
        from integrations.outbound import check_events

        if "events" in serializer.validated_data:
            serializer.validated_data["events"] = check_events(serializer.validated_data["events"])
        serializer.save()

    @extend_schema(request=None, responses=WebhookEndpointSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Start sending to a paused endpoint again, waiting messages first."""
        from integrations.outbound import webhook_endpoint_resume

        endpoint = self.get_object()
        webhook_endpoint_resume(endpoint=endpoint)
        endpoint.refresh_from_db()
        return Response(WebhookEndpointSerializer(endpoint, context={"request": request}).data)

    @extend_schema(responses=WebhookMessageSerializer(many=True))
    @action(detail=True, methods=["get"])
    def messages(self, request, pk=None):
        """What was sent (or is waiting) to the endpoint, newest first, with attempts and errors."""
        endpoint = self.get_object()
        page = self.paginate_queryset(WebhookMessage.objects.filter(endpoint=endpoint).order_by("-id"))
        return self.get_paginated_response(WebhookMessageSerializer(page, many=True).data)


# --- partner tag mappings ------------------------------------------------------------------------------


class TagMappingSerializer(StoreBoundSerializer):

    class Meta:
        model = TagMapping
        fields = ("id", "store", "attribute", "kind", "pattern", "created_at")
        read_only_fields = ("created_at",)

    def validate(self, data):
        from django.core.exceptions import ValidationError as DjangoValidationError

        from integrations.aitrillion.mappings import compile_pattern

        kind = data.get("kind", getattr(self.instance, "kind", "prefix"))
        pattern = data.get("pattern", getattr(self.instance, "pattern", ""))
        try:
            compile_pattern(kind, pattern)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from exc
        return data


class MappingPreviewRequestSerializer(serializers.Serializer):
    store = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=MatchKind.choices)
    pattern = serializers.CharField()


class MappingPreviewSerializer(serializers.Serializer):
    customers = serializers.IntegerField()
    customers_with_value = serializers.IntegerField()
    values = serializers.ListField(child=inline_serializer("MappedValue", {
        "value": serializers.CharField(), "customers": serializers.IntegerField(),
        "examples": serializers.ListField(child=serializers.CharField())}))


class TagMappingViewSet(StoreScopedMixin, StoreWriteCheckedMixin, viewsets.ModelViewSet):
    """Rules that read partner tags (AiTrillion) as loyalty tier, membership plan, affiliate group, signup source."""

    queryset = TagMapping.objects.select_related("store")
    serializer_class = TagMappingSerializer
    filterset_fields = ("store", "attribute")
    ordering = ("-id",)
    read_only_actions = ("preview",)

    @extend_schema(request=MappingPreviewRequestSerializer, responses=MappingPreviewSerializer)
    @action(detail=False, methods=["post"])
    def preview(self, request):
        """What a mapping would read from the store's current tags, without saving it."""
        from django.core.exceptions import ValidationError as DjangoValidationError

        from integrations.aitrillion.mappings import mapping_preview

        params = MappingPreviewRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        store = request_stores(request).filter(pk=params.validated_data["store"]).first()
        if store is None:
            raise NotFound()
        try:
            preview = mapping_preview(store=store, kind=params.validated_data["kind"],
                                      pattern=params.validated_data["pattern"])
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from exc
        return Response(MappingPreviewSerializer({
            "customers": preview.customers, "customers_with_value": preview.customers_with_value,
            "values": [{"value": v, "customers": n, "examples": e} for v, n, e in preview.values]}).data)


# --- Channel Talk settings ------------------------------------------------------------------------------


class ChannelTalkConnectionSerializer(StoreBoundSerializer):
    segment_fields = ("segments",)
    access_key = serializers.CharField(write_only=True, required=False, help_text="Stored encrypted; never returned.")
    access_secret = serializers.CharField(write_only=True, required=False,
                                          help_text="Stored encrypted; never returned.")
    segments = serializers.PrimaryKeyRelatedField(many=True, queryset=Segment.objects.none(), required=False)

    class Meta:
        model = ChannelTalkConnection
        fields = ("id", "store", "access_key", "access_secret", "base_url", "member_id_source", "profile_field",
                  "segments", "active", "created_at")
        read_only_fields = ("created_at",)

    def validate(self, data):
        store = data.get("store") or getattr(self.instance, "store", None)
        if self.instance is None and not (data.get("access_key") and data.get("access_secret")):
            raise serializers.ValidationError({"access_key": ["The access key and secret are needed to connect."]})
        if store:
            self.check_segments(store, data.get("segments", []), "segments")
        return data


class ChannelTalkConnectionViewSet(StoreScopedMixin, viewsets.ModelViewSet):
    """A store's Channel Talk channel (keys write-only) and the segments pushed to its users."""

    queryset = ChannelTalkConnection.objects.select_related("store").prefetch_related("segments")
    serializer_class = ChannelTalkConnectionSerializer
    filterset_fields = ("store",)
    ordering = ("-id",)

    def perform_create(self, serializer):
        if not request_can_write(self.request, serializer.validated_data["store"].pk):
            raise PermissionDenied()
        if ChannelTalkConnection.objects.filter(store=serializer.validated_data["store"]).exists():
            raise serializers.ValidationError({"store": ["This store is connected already; change that connection."]})
        serializer.save()

    @extend_schema(request=None, responses={202: SyncJobSerializer})
    @action(detail=True, methods=["post"])
    def push(self, request, pk=None):
        """Queue a push of the segments to Channel Talk now (the daily run also pushes)."""
        from integrations.channeltalk.push import channeltalk_push_start

        connection = self.get_object()
        user = request.user if getattr(request.user, "pk", None) else None
        try:
            job = channeltalk_push_start(store=connection.store, user=user)
        except PartnerError as exc:
            raise serializers.ValidationError({"active": [str(exc)]}) from exc
        return Response(SyncJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)
