"""Sync jobs over the API: start imports and tag syncs, follow their progress."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from ecpower.api.framework import StoreScopedMixin, request_can_write, request_stores
from ecpower.commerce.models import Store
from integrations.http import PartnerError
from integrations.jobs import import_start, tag_sync_start
from integrations.models import SyncJob, SyncJobKind
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
