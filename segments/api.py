"""Segments over the API: define, read, preview, recompute, members (cursor-paginated)."""

from __future__ import annotations

from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response

from ecpower.api.framework import StoreScopedMixin, request_can_write, request_stores
from ecpower.commerce.api import CustomerSerializer
from ecpower.commerce.models import Store
from integrations.api import SyncJobSerializer, start_job
from segments.models import Segment, SegmentKind
from segments.selectors import segment_members, segment_preview, segments_referring_to
from segments.services import rule_from_input, segment_create, segment_update
from segments.tasks import segment_recompute_enqueue


class SegmentSerializer(serializers.ModelSerializer):
    store = serializers.PrimaryKeyRelatedField(queryset=Store.objects.none())
    query = serializers.CharField(required=False, allow_blank=False,
                                  help_text="The rule in the query language (docs/segments.md).")
    rule = serializers.JSONField(required=False, help_text="The rule tree, instead of query.")

    class Meta:
        model = Segment
        fields = ("id", "store", "name", "slug", "description", "kind", "query", "rule", "shopify_tag", "status",
                  "member_count", "last_computed_at", "last_computed_for", "last_joined", "last_left",
                  "last_duration_ms", "last_error", "list_origin", "expression", "as_of", "holdout_percent",
                  "holdout_count", "created_at", "updated_at")
        read_only_fields = ("kind", "status", "member_count", "last_computed_at", "last_computed_for",
                            "last_joined", "last_left", "last_duration_ms", "last_error", "list_origin",
                            "expression", "as_of", "holdout_percent", "holdout_count", "created_at", "updated_at")
        extra_kwargs = {"slug": {"required": False}}
        validators = []  # segment_create checks the slug is free and says so with the field's path

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            self.fields["store"].queryset = request_stores(request)
        if self.instance is not None and not isinstance(self.instance, list | tuple):
            self.fields["store"].read_only = True
            self.fields["slug"].read_only = True


class PreviewRequestSerializer(serializers.Serializer):
    store = serializers.IntegerField()
    query = serializers.CharField(required=False)
    rule = serializers.JSONField(required=False)
    as_of = serializers.DateField(required=False, allow_null=True)


class PreviewSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    as_of = serializers.DateField()
    query = serializers.CharField()
    rule = serializers.JSONField()
    sample = CustomerSerializer(many=True)


class TagSyncRequestSerializer(serializers.Serializer):
    dry_run = serializers.BooleanField(default=False, help_text="Count and sample the changes; write nothing.")
    remove = serializers.BooleanField(default=False, help_text="Remove the tag from every customer we tagged.")
    native_segment = serializers.BooleanField(default=False, help_text="Also create a Shopify segment for the tag.")


class SegmentViewSet(StoreScopedMixin, mixins.CreateModelMixin, mixins.UpdateModelMixin,
                     mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet):
    """Condition segments and lists. Creating and changing a rule queues a recompute."""

    queryset = Segment.objects.select_related("store")
    serializer_class = SegmentSerializer
    filterset_fields = ("kind", "status", "slug")
    ordering_fields = ("id", "name", "member_count", "last_computed_at")
    ordering = ("-id",)
    read_only_actions = ("preview",)

    def perform_create(self, serializer):
        store = serializer.validated_data["store"]
        if not request_can_write(self.request, store.pk):
            raise PermissionDenied()
        data = serializer.validated_data
        with transaction.atomic():
            segment = segment_create(
                store=store, name=data["name"], slug=data.get("slug", ""), query=data.get("query"),
                rule=data.get("rule"), description=data.get("description", ""),
                shopify_tag=data.get("shopify_tag", ""), user=self._user(),
            )
            segment_recompute_enqueue(segment)
        serializer.instance = segment

    def perform_update(self, serializer):
        data = serializer.validated_data
        fields = {name: data[name] for name in ("name", "description", "shopify_tag") if name in data}
        with transaction.atomic():
            segment = segment_update(segment=serializer.instance, query=data.get("query"), rule=data.get("rule"),
                                     user=self._user(), **fields)
            if segment.kind == SegmentKind.CONDITION:
                segment_recompute_enqueue(segment)
        serializer.instance = segment

    def perform_destroy(self, instance):
        users = segments_referring_to(instance)
        if users:
            raise serializers.ValidationError(
                {"slug": [f"{instance.slug} is used by in_segment() in: {', '.join(u.slug for u in users)}."]})
        instance.delete()

    def _user(self):
        user = self.request.user
        return user if getattr(user, "pk", None) else None

    @extend_schema(request=PreviewRequestSerializer, responses=PreviewSerializer)
    @action(detail=False, methods=["post"])
    def preview(self, request):
        """Count and a sample of the customers a query would select, without saving anything."""
        params = PreviewRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        store = request_stores(request).filter(pk=params.validated_data["store"]).first()
        if store is None:
            raise NotFound()
        tree = rule_from_input(store=store, query=params.validated_data.get("query"),
                               rule=params.validated_data.get("rule"))
        preview = segment_preview(store=store, tree=tree, as_of=params.validated_data.get("as_of"))
        return Response(PreviewSerializer({"count": preview.count, "as_of": preview.as_of, "query": preview.query,
                                           "rule": preview.tree, "sample": preview.sample},
                                          context={"request": request}).data)

    @extend_schema(request=None, responses={202: None})
    @action(detail=True, methods=["post"])
    def recompute(self, request, pk=None):
        """Queue a recompute of a condition segment."""
        segment = self.get_object()
        if segment.kind != SegmentKind.CONDITION:
            raise serializers.ValidationError("Lists are not recomputed; their members change by explicit action.")
        segment_recompute_enqueue(segment)
        return Response(status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=TagSyncRequestSerializer, responses={202: SyncJobSerializer})
    @action(detail=True, methods=["post"], url_path="tag-sync")
    def tag_sync(self, request, pk=None):
        """Push the segment's Shopify tag (or preview with dry_run, or remove it from everyone we tagged)."""
        segment = self.get_object()
        params = TagSyncRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        kind = "tag_remove" if params.validated_data["remove"] else "tag_sync"
        job = start_job(request, {"store": segment.store, "segment": segment, "kind": kind,
                                  "dry_run": params.validated_data["dry_run"],
                                  "native_segment": params.validated_data["native_segment"]})
        return Response(SyncJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=CustomerSerializer(many=True))
    @action(detail=True, methods=["get"])
    def members(self, request, pk=None):
        """The segment's members, cursor-paginated, newest customers first."""
        segment = self.get_object()
        page = self.paginate_queryset(segment_members(segment).prefetch_related("tags").order_by("-id"))
        return self.get_paginated_response(CustomerSerializer(page, many=True).data)
