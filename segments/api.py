"""Segments over the API: define, read, preview, recompute, members (cursor-paginated)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.db import transaction
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response

from ecpower.api.framework import StoreScopedMixin, request_can_write, request_stores
from ecpower.commerce.api import CustomerSerializer
from ecpower.commerce.models import Customer, Store
from ecpower.commerce.shopify_csv import CsvFileError
from integrations.api import SyncJobSerializer, start_job
from segments import exports
from segments.lists import (
    list_create_from_csv,
    list_create_from_expression,
    list_create_from_query,
    list_create_from_segment,
)
from segments.models import (
    ListOrigin,
    ListUpload,
    Membership,
    MembershipEvent,
    Segment,
    SegmentKind,
    SegmentVersion,
)
from segments.selectors import segment_explain, segment_members, segment_preview, segments_referring_to
from segments.services import rule_from_input, segment_create, segment_update
from segments.tasks import segment_recompute_enqueue


class SegmentSerializer(serializers.ModelSerializer):
    store = serializers.PrimaryKeyRelatedField(queryset=Store.objects.none())
    query = serializers.CharField(required=False, allow_blank=False,
                                  help_text="The rule in the query language (docs/segments.md).")
    rule = serializers.JSONField(required=False, help_text="The rule tree, instead of query.")
    list_origin = serializers.ChoiceField(choices=ListOrigin.choices, allow_blank=True, read_only=True,
                                          help_text="What a list was made from; empty for condition segments.")

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


# --- history, explain, export ------------------------------------------------------------------------


class MembershipEventSerializer(serializers.ModelSerializer):
    email = serializers.CharField(source="customer.email", read_only=True)

    class Meta:
        model = MembershipEvent
        fields = ("id", "date", "kind", "customer", "email")
        read_only_fields = fields


class SegmentVersionSerializer(serializers.ModelSerializer):
    changed_by = serializers.CharField(source="created_by.username", default=None, read_only=True)

    class Meta:
        model = SegmentVersion
        fields = ("number", "query", "rule", "changed_by", "created_at")
        read_only_fields = fields


class ExplainLineSerializer(serializers.Serializer):
    path = serializers.CharField()
    condition = serializers.CharField()
    matched = serializers.BooleanField()
    actual = serializers.JSONField(allow_null=True)


class ExplanationSerializer(serializers.Serializer):
    customer = serializers.IntegerField()
    matched = serializers.BooleanField()
    member = serializers.BooleanField(help_text="Whether the customer is a stored member now.")
    as_of = serializers.DateField()
    lines = ExplainLineSerializer(many=True)


class SegmentHistoryActions:
    """Detail actions of /segments/{id}/: joins and leaves, versions, explain one customer, CSV export."""

    @extend_schema(parameters=[OpenApiParameter("event", str, enum=["joined", "left"]),
                               OpenApiParameter("since", dt.date), OpenApiParameter("until", dt.date)],
                   responses=MembershipEventSerializer(many=True))
    @action(detail=True, methods=["get"])
    def events(self, request, pk=None):
        """Joins and leaves of the segment, newest first (cursor-paginated)."""
        segment = self.get_object()
        events = MembershipEvent.objects.filter(segment=segment).select_related("customer").order_by("-id")
        if request.query_params.get("event") in ("joined", "left"):
            events = events.filter(kind=request.query_params["event"])
        for name, lookup in (("since", "date__gte"), ("until", "date__lte")):
            if request.query_params.get(name):
                try:
                    events = events.filter(**{lookup: dt.date.fromisoformat(request.query_params[name])})
                except ValueError:
                    raise serializers.ValidationError({name: ["Expected a date (YYYY-MM-DD)."]}) from None
        page = self.paginate_queryset(events)
        return self.get_paginated_response(MembershipEventSerializer(page, many=True).data)

    @extend_schema(responses=SegmentVersionSerializer(many=True))
    @action(detail=True, methods=["get"])
    def versions(self, request, pk=None):
        """Every saved definition of the segment, newest first."""
        segment = self.get_object()
        versions = segment.versions.select_related("created_by").order_by("-number")
        return Response(SegmentVersionSerializer(versions, many=True).data)

    @extend_schema(parameters=[OpenApiParameter("customer", int, required=True),
                               OpenApiParameter("as_of", dt.date)], responses=ExplanationSerializer)
    @action(detail=True, methods=["get"])
    def explain(self, request, pk=None):
        """Why a customer is in the segment or not: each condition's verdict and the value it read."""
        segment = self.get_object()
        if segment.kind != SegmentKind.CONDITION:
            raise serializers.ValidationError({"customer": ["Lists have no rule to explain."]})
        customer_id = request.query_params.get("customer", "")
        customer = Customer.objects.filter(store=segment.store, pk=customer_id if customer_id.isdigit() else None
                                           ).first()
        if customer is None:
            raise NotFound()
        as_of = request.query_params.get("as_of")
        try:
            as_of = dt.date.fromisoformat(as_of) if as_of else None
        except ValueError:
            raise serializers.ValidationError({"as_of": ["Expected a date (YYYY-MM-DD)."]}) from None
        result = segment_explain(store=segment.store, tree=segment.rule, customer=customer, as_of=as_of)
        member = Membership.objects.filter(segment=segment, customer=customer).exists()
        lines = [{"path": line.path, "condition": line.condition, "matched": line.matched,
                  "actual": _json_value(line.actual)} for line in result.lines]
        return Response(ExplanationSerializer({"customer": customer.pk, "matched": result.matched, "member": member,
                                               "as_of": result.as_of, "lines": lines}).data)

    @extend_schema(parameters=[
        OpenApiParameter("columns", str, description=f"Comma separated, of: {', '.join(exports.COLUMNS)}."),
        OpenApiParameter("encoding", str, enum=list(exports.ENCODINGS), default="utf-8-sig"),
        OpenApiParameter("holdout", str, enum=["all", "exclude", "only"], default="all")],
        responses={(200, "text/csv"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"])
    def export(self, request, pk=None):
        """The members as CSV, streamed (UTF-8 with BOM for Excel by default, or Shift_JIS)."""
        segment = self.get_object()
        columns = [c for c in request.query_params.get("columns", "").split(",") if c] or None
        holdout = {"all": None, "exclude": False, "only": True}.get(request.query_params.get("holdout", "all"), "?")
        if holdout == "?":
            raise serializers.ValidationError({"holdout": ["Choose all, exclude or only."]})
        for name, check in (("encoding", exports.check_encoding), ("columns", exports.check_columns)):
            try:
                check(request.query_params.get("encoding", "utf-8-sig") if name == "encoding" else columns)
            except ValueError as exc:
                raise serializers.ValidationError({name: [str(exc)]}) from exc
        export = exports.MemberExport([segment], columns=columns, holdout=holdout,
                                      encoding=request.query_params.get("encoding", "utf-8-sig"))
        charset = "shift_jis" if export.encoding == "cp932" else "utf-8"
        response = StreamingHttpResponse(export.chunks(), content_type=f"text/csv; charset={charset}")
        response["Content-Disposition"] = f'attachment; filename="{segment.slug}.csv"'
        return response


def _json_value(value):
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value



class SegmentViewSet(SegmentHistoryActions, StoreScopedMixin, mixins.CreateModelMixin, mixins.UpdateModelMixin,
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


# --- lists ---------------------------------------------------------------------------------------------


class ListUploadSerializer(serializers.ModelSerializer):
    class Meta:
        model = ListUpload
        fields = ("file_name", "size_bytes", "encoding", "column", "has_header", "rows", "blank_rows", "matched",
                  "unmatched", "duplicates")
        read_only_fields = fields


class ListSerializer(SegmentSerializer):
    upload = ListUploadSerializer(read_only=True, help_text="The match report of a list made from a CSV file.")

    class Meta(SegmentSerializer.Meta):
        fields = (*SegmentSerializer.Meta.fields, "holdout_seed", "upload")
        read_only_fields = tuple(SegmentSerializer.Meta.fields) + ("holdout_seed", "upload")


class ListCreateSerializer(serializers.Serializer):
    store = serializers.PrimaryKeyRelatedField(queryset=Store.objects.none())
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=100, required=False, allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    origin = serializers.ChoiceField(choices=ListOrigin.choices)
    query = serializers.CharField(required=False, help_text="origin=query: the query (or give rule).")
    rule = serializers.JSONField(required=False, help_text="origin=query: the rule tree.")
    as_of = serializers.DateField(required=False, allow_null=True, help_text="origin=query: evaluate as of this day.")
    source = serializers.PrimaryKeyRelatedField(queryset=Segment.objects.none(), required=False,
                                                help_text="origin=snapshot: the segment to freeze.")
    expression = serializers.CharField(required=False, help_text="origin=expression, e.g. (vip | line) - unsub.")
    file = serializers.FileField(required=False, help_text="origin=csv: emails or Shopify customer ids "
                                                           "(UTF-8 or Shift_JIS), sent as multipart/form-data.")
    column = serializers.CharField(required=False, allow_blank=True, help_text="origin=csv: the column to read.")
    holdout_percent = serializers.DecimalField(max_digits=5, decimal_places=2, required=False, allow_null=True)
    seed = serializers.IntegerField(required=False, allow_null=True, help_text="Holdout draw seed (reproducible).")

    NEEDS = {ListOrigin.QUERY: ("query", "rule"), ListOrigin.SNAPSHOT: ("source",),
             ListOrigin.EXPRESSION: ("expression",), ListOrigin.CSV: ("file",)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            stores = request_stores(request)
            self.fields["store"].queryset = stores
            self.fields["source"].queryset = Segment.objects.filter(store__in=stores)

    def validate(self, data):
        needs = self.NEEDS[data["origin"]]
        if not any(data.get(name) not in (None, "") for name in needs):
            raise serializers.ValidationError({needs[0]: [f"origin={data['origin']} needs {' or '.join(needs)}."]})
        if data.get("source") and data["source"].store_id != data["store"].pk:
            raise serializers.ValidationError({"source": ["The segment belongs to another store."]})
        return data


class ListSegmentViewSet(StoreScopedMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """List segments with their origin and match report. POST makes one from a query, a snapshot of a
    segment, a set expression or a CSV upload (multipart/form-data); other changes go through /segments/."""

    queryset = Segment.objects.filter(kind=SegmentKind.LIST).select_related("store", "upload")
    serializer_class = ListSerializer
    parser_classes = (JSONParser, MultiPartParser, FormParser)
    filterset_fields = ("list_origin", "slug")
    ordering = ("-id",)

    @extend_schema(request={"application/json": ListCreateSerializer, "multipart/form-data": ListCreateSerializer},
                   responses={201: ListSerializer})
    def create(self, request, *args, **kwargs):
        params = ListCreateSerializer(data=request.data, context={"request": request})
        params.is_valid(raise_exception=True)
        data = params.validated_data
        store = data["store"]
        if not request_can_write(request, store.pk):
            raise PermissionDenied()
        user = request.user if getattr(request.user, "pk", None) else None
        common = {"name": data["name"], "slug": data.get("slug", ""), "description": data.get("description", ""),
                  "holdout_percent": data.get("holdout_percent"), "seed": data.get("seed"), "user": user}
        origin = data["origin"]
        try:
            if origin == ListOrigin.QUERY:
                segment = list_create_from_query(store=store, query=data.get("query"), rule=data.get("rule"),
                                                 as_of=data.get("as_of"), **common)
            elif origin == ListOrigin.SNAPSHOT:
                segment = list_create_from_segment(source=data["source"], **common)
            elif origin == ListOrigin.EXPRESSION:
                segment = list_create_from_expression(store=store, expression=data["expression"], **common)
            else:
                upload = data["file"]
                segment = list_create_from_csv(store=store, data=upload.read(), file_name=upload.name,
                                               column=data.get("column") or None, **common)
        except CsvFileError as exc:
            raise serializers.ValidationError({"file": [str(exc)]}) from exc
        segment = self.get_queryset().get(pk=segment.pk)
        return Response(ListSerializer(segment, context={"request": request}).data, status=status.HTTP_201_CREATED)
