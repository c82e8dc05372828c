"""What every API view shares: API-key authentication, store scoping, write permission, per-key
throttling, cursor pagination and the error format (``ecpower.api.errors``).

Every view inherits ``StoreScopedMixin``: its queryset only ever holds rows of the stores the
request may see, so an object of another store is a 404, never a leak.
"""

from __future__ import annotations

from django.utils.translation import gettext as _
from rest_framework import exceptions, pagination, permissions, serializers, throttling
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import PermissionDenied

from ecpower.commerce.access import api_key_check, can_write, stores_for
from ecpower.commerce.models import ApiKey, Store


class ApiKeyUser:
    """``request.user`` of a request made with an API key (``request.auth`` is the key)."""

    is_authenticated = True
    is_active = True
    is_anonymous = False
    is_staff = False
    is_superuser = False
    pk = id = None

    def __init__(self, key: ApiKey):
        self.key = key

    def __str__(self) -> str:
        return f"api-key:{self.key.prefix}"


class ApiKeyAuthentication(BaseAuthentication):
    """``Authorization: Bearer ecp_…``."""

    keyword = "Bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(_("Send the key as 'Authorization: Bearer <key>'."))
        key = api_key_check(parts[1].decode(errors="replace"))
        if key is None:
            raise exceptions.AuthenticationFailed(_("Unknown or revoked API key."))
        return ApiKeyUser(key), key

    def authenticate_header(self, request) -> str:
        return self.keyword


def request_api_key(request) -> ApiKey | None:
    return request.auth if isinstance(request.auth, ApiKey) else None


def request_stores(request):
    return stores_for(user=request.user, api_key=request_api_key(request))


def request_can_write(request, store_id: int) -> bool:
    return can_write(store_id=store_id, user=request.user, api_key=request_api_key(request))


class StoreScopedMixin:
    """Limit the view's queryset to the request's stores (``store_lookup`` names the path)."""

    store_lookup = "store"

    def get_queryset(self):
        return super().get_queryset().filter(**{f"{self.store_lookup}__in": request_stores(self.request)})


class StorePermission(permissions.BasePermission):
    """Reading needs a key or a staff login; writing needs a read-write key or an editor role.

    Views mark actions that only read (e.g. a preview sent by POST) with ``read_only_actions``.
    """

    message = _("This key or user may only read this store.")

    def _reads(self, request, view) -> bool:
        return request.method in permissions.SAFE_METHODS or getattr(view, "action", None) in getattr(
            view, "read_only_actions", ())

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request_api_key(request) is None and not user.is_staff:
            return False
        return True

    def has_object_permission(self, request, view, obj) -> bool:
        if self._reads(request, view):
            return True
        store_id = obj.pk if isinstance(obj, Store) else obj.store_id
        return request_can_write(request, store_id)


class ApiKeyRateThrottle(throttling.SimpleRateThrottle):
    """Per key (or per staff user) request budget; over it: 429 with Retry-After."""

    scope = "api"

    def get_cache_key(self, request, view):
        key = request_api_key(request)
        ident = f"key-{key.pk}" if key else f"user-{request.user.pk}" if request.user.is_authenticated else (
            self.get_ident(request))
        return self.cache_format % {"scope": self.scope, "ident": ident}


class CursorPagination(pagination.CursorPagination):
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000
    ordering = "-id"


class StoreBoundSerializer(serializers.ModelSerializer):
    """A model serializer whose ``store`` is one of the request's stores (fixed once created).

    Fields listed in ``segment_fields`` (many-to-many segment ids) only accept segments of those
    stores: another store's ids do not exist here.
    """

    store = serializers.PrimaryKeyRelatedField(queryset=Store.objects.none())
    segment_fields: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            stores = request_stores(request)
            self.fields["store"].queryset = stores
            for name in self.segment_fields:
                if name in self.fields:
                    from segments.models import Segment

                    self.fields[name].child_relation.queryset = Segment.objects.filter(store__in=stores)
        if self.instance is not None and not isinstance(self.instance, list | tuple):
            self.fields["store"].read_only = True

    def check_segments(self, store, segments, field: str) -> None:
        if any(s.store_id != store.pk for s in segments):
            raise serializers.ValidationError({field: ["Choose segments of the same store."]})


class StoreWriteCheckedMixin:
    """Creating needs write access to the chosen store (a read key or a viewer gets 403)."""

    def perform_create(self, serializer):
        if not request_can_write(self.request, serializer.validated_data["store"].pk):
            raise PermissionDenied()
        serializer.save()
