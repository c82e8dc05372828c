"""Store data over the API: stores, customers (with facts, tags and current segments), orders."""

from __future__ import annotations

import datetime as dt

import django_filters
from django import forms
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import mixins, serializers, viewsets

from ecpower.api.framework import StoreScopedMixin
from ecpower.commerce.models import Customer, CustomerTag, Order, Store
from segments.models import Membership
from segments.selectors import customer_memberships


class UTCIsoDateTimeField(django_filters.fields.IsoDateTimeField):
    """An ISO 8601 time read in UTC: Python accepts offsets up to ±23:59, PostgreSQL only to ±15:59."""

    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return None
        try:
            return value.astimezone(dt.UTC)
        except OverflowError as exc:
            raise forms.ValidationError(_("This time is out of range."), code="invalid") from exc


class UTCIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCIsoDateTimeField


class StoreSerializer(serializers.ModelSerializer):
    class Meta:
        model = Store
        fields = ("id", "name", "shopify_domain", "time_zone", "currency", "tag_prefix", "daily_run_hour", "created_at")
        read_only_fields = ("shopify_domain", "created_at")


class StoreViewSet(StoreScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin,
                   viewsets.GenericViewSet):
    """The stores this key or user may see; owners and editors change settings."""

    queryset = Store.objects.all()
    serializer_class = StoreSerializer
    store_lookup = "pk"
    ordering = ("id",)
    ordering_fields = ("id", "name")


class CustomerSegmentSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="segment.id")
    slug = serializers.CharField(source="segment.slug")
    name = serializers.CharField(source="segment.name")
    since = serializers.DateField()
    holdout = serializers.BooleanField()


class CustomerSerializer(serializers.ModelSerializer):
    tags = serializers.SerializerMethodField()

    class Meta:
        model = Customer
        fields = ("id", "store", "shopify_id", "email", "phone", "first_name", "last_name", "email_marketing",
                  "sms_marketing", "country_code", "province_code", "city", "shopify_created_at", "orders_count",
                  "amount_spent", "average_order_value", "first_order_at", "last_order_at",
                  "first_order_discount_code", "first_order_source", "first_order_utm_source",
                  "first_order_utm_medium", "first_order_utm_campaign", "tags")

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_tags(self, customer: Customer) -> list[str]:
        return sorted(tag.name for tag in customer.tags.all())


class CustomerDetailSerializer(CustomerSerializer):
    segments = serializers.SerializerMethodField()

    class Meta(CustomerSerializer.Meta):
        fields = (*CustomerSerializer.Meta.fields, "segments")

    @extend_schema_field(CustomerSegmentSerializer(many=True))
    def get_segments(self, customer: Customer) -> list[dict]:
        memberships = customer_memberships(customer).order_by("segment__slug")
        return CustomerSegmentSerializer(memberships, many=True).data


class CustomerFilter(django_filters.FilterSet):
    search = django_filters.CharFilter(method="filter_search", label="email, name or phone contains")
    tag = django_filters.CharFilter(method="filter_tag", label="has this tag (exact, case-insensitive)")
    segment = django_filters.CharFilter(method="filter_segment", label="member of the segment with this slug")
    # Plain numbers, not model choices: a choice filter would tell another store's ids apart.
    store = django_filters.NumberFilter(field_name="store_id")
    shopify_id = django_filters.NumberFilter()
    orders_count_min = django_filters.NumberFilter(field_name="orders_count", lookup_expr="gte")
    last_order_after = UTCIsoDateTimeFilter(field_name="last_order_at", lookup_expr="gte")

    class Meta:
        model = Customer
        fields = ("email_marketing",)

    def filter_search(self, queryset, name, value):
        return queryset.filter(Q(email__icontains=value) | Q(first_name__icontains=value)
                               | Q(last_name__icontains=value) | Q(phone__icontains=value))

    def filter_tag(self, queryset, name, value):
        return queryset.filter(pk__in=CustomerTag.objects.filter(name__iexact=value).values("customer_id"))

    def filter_segment(self, queryset, name, value):
        return queryset.filter(pk__in=Membership.objects.filter(segment__slug=value).values("customer_id"))


class CustomerViewSet(StoreScopedMixin, viewsets.ReadOnlyModelViewSet):
    queryset = Customer.objects.prefetch_related("tags")
    serializer_class = CustomerSerializer
    filterset_class = CustomerFilter
    ordering_fields = ("id", "amount_spent", "orders_count", "last_order_at")

    def get_serializer_class(self):
        return CustomerDetailSerializer if self.action == "retrieve" else CustomerSerializer


class OrderSerializer(serializers.ModelSerializer):
    class Meta:
        model = Order
        fields = ("id", "store", "shopify_id", "name", "customer", "email", "created_at", "processed_at", "currency",
                  "subtotal", "total_discounts", "discount_code", "shipping", "tax", "total", "refunded_amount",
                  "source_name", "utm_source", "utm_medium", "utm_campaign", "ordinal", "cancelled_at", "test")


class OrderFilter(django_filters.FilterSet):
    store = django_filters.NumberFilter(field_name="store_id")
    customer = django_filters.NumberFilter(field_name="customer_id")
    created_after = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Order
        fields = ("discount_code", "source_name")


class OrderViewSet(StoreScopedMixin, viewsets.ReadOnlyModelViewSet):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    filterset_class = OrderFilter
    ordering_fields = ("id", "created_at", "total")
