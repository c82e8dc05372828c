"""Routes of /api/v1/: one router for every app's viewsets, the OpenAPI schema and its viewers."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from ecpower.api import schema  # noqa: F401  (registers the API-key scheme)
from ecpower.commerce.api import CustomerViewSet, OrderViewSet, StoreViewSet
from integrations.api import ChannelTalkConnectionViewSet, SyncJobViewSet, TagMappingViewSet, WebhookEndpointViewSet
from integrations.webhooks import shopify_webhook
from metrics.api import (
    CampaignViewSet,
    JourneyViewSet,
    PipelineRunViewSet,
    SegmentMetricsActions,
    StoreMetricsActions,
)
from segments.api import ListSegmentViewSet, SegmentViewSet


class StoreWithMetricsViewSet(StoreMetricsActions, StoreViewSet):
    """The stores this key or user may see; owners and editors change settings. Cohorts and RFM per store."""


class SegmentWithMetricsViewSet(SegmentMetricsActions, SegmentViewSet):
    """Condition segments and lists; their metric history and insights. Creating and changing a rule queues a
    recompute (and the history's backfill)."""


router = DefaultRouter()
router.register("stores", StoreWithMetricsViewSet, basename="store")
router.register("customers", CustomerViewSet, basename="customer")
router.register("orders", OrderViewSet, basename="order")
router.register("segments", SegmentWithMetricsViewSet, basename="segment")
router.register("lists", ListSegmentViewSet, basename="list")
router.register("sync-jobs", SyncJobViewSet, basename="sync-job")
router.register("journeys", JourneyViewSet, basename="journey")
router.register("campaigns", CampaignViewSet, basename="campaign")
router.register("daily-runs", PipelineRunViewSet, basename="daily-run")
router.register("webhook-endpoints", WebhookEndpointViewSet, basename="webhook-endpoint")
router.register("tag-mappings", TagMappingViewSet, basename="tag-mapping")
router.register("channel-talk", ChannelTalkConnectionViewSet, basename="channel-talk")

urlpatterns = [
    path("", include(router.urls)),
    path("webhooks/shopify/", shopify_webhook, name="shopify-webhook"),
    path("schema/", SpectacularAPIView.as_view(permission_classes=[]), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema", permission_classes=[]), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api-schema", permission_classes=[]), name="api-redoc"),
]
