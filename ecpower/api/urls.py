"""Routes of /api/v1/: one router for every app's viewsets, the OpenAPI schema and its viewers."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from ecpower.api import schema  # noqa: F401  (registers the API-key scheme)
from ecpower.commerce.api import CustomerViewSet, OrderViewSet, StoreViewSet
from integrations.api import SyncJobViewSet
from integrations.webhooks import shopify_webhook
from segments.api import SegmentViewSet

router = DefaultRouter()
router.register("stores", StoreViewSet, basename="store")
router.register("customers", CustomerViewSet, basename="customer")
router.register("orders", OrderViewSet, basename="order")
router.register("segments", SegmentViewSet, basename="segment")
router.register("sync-jobs", SyncJobViewSet, basename="sync-job")

urlpatterns = [
    path("", include(router.urls)),
    path("webhooks/shopify/", shopify_webhook, name="shopify-webhook"),
    path("schema/", SpectacularAPIView.as_view(permission_classes=[]), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema", permission_classes=[]), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api-schema", permission_classes=[]), name="api-redoc"),
]
