"""The admin, scoped by store: staff see the stores they are members of, and change them by role.

Superusers see and change everything. A staff user with a ``StoreMembership`` sees that store's
rows in every admin page built on ``StoreScopedAdmin`` (whatever Django model permissions say):
viewers read, editors and owners change; store memberships and API keys are changed by owners
only. Rows of other stores are not found (404), as in the API. Custom admin views fetch their
objects through ``scoped`` / ``scoped_object_or_404`` and check writes with ``require_write``.
"""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.shortcuts import get_object_or_404

from ecpower.commerce.access import WRITE_ROLES, stores_for
from ecpower.commerce.models import Store, StoreMembership, StoreRole


def admin_stores(request) -> QuerySet[Store]:
    return stores_for(user=request.user, deleting=True)


def writable_stores(request, roles=WRITE_ROLES, deleting: bool = False) -> QuerySet[Store]:
    """The stores the user may change: not one being deleted, unless ``deleting`` (asking again for its
    deletion is the one change left)."""
    stores = Store.objects.all() if deleting else Store.objects.live()
    if request.user.is_superuser:
        return stores
    return stores.filter(memberships__user=request.user, memberships__role__in=roles)


def scoped(request, queryset: QuerySet, lookup: str = "store") -> QuerySet:
    """``queryset`` limited to the stores the request's user may see."""
    if request.user.is_superuser:
        return queryset
    return queryset.filter(**{f"{lookup}__in": admin_stores(request)})


def scoped_object_or_404(request, queryset: QuerySet, lookup: str = "store", **kwargs) -> Model:
    return get_object_or_404(scoped(request, queryset, lookup), **kwargs)


def require_write(request, store_id: int, roles=WRITE_ROLES) -> None:
    """PermissionDenied unless the user may change ``store_id`` (a viewer may not)."""
    if not writable_stores(request, roles).filter(pk=store_id).exists():
        raise PermissionDenied


def _store_id(obj: Model, lookup: str) -> int | None:
    if lookup == "pk":
        return obj.pk
    value = obj
    for part in lookup.split("__"):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value.pk if isinstance(value, Model) else value


class StoreScopedAdmin(admin.ModelAdmin):
    """A ModelAdmin whose rows, choices and permissions follow the user's store memberships."""

    store_lookup = "store"  # the path from the model to its Store
    write_roles = WRITE_ROLES

    def _member(self, request) -> bool:
        user = request.user
        return user.is_active and user.is_staff and (
            user.is_superuser or StoreMembership.objects.filter(user=user).exists())

    def _writer(self, request, obj=None) -> bool:
        stores = writable_stores(request, self.write_roles)
        if obj is None:
            return request.user.is_superuser or stores.exists()
        store_id = _store_id(obj, self.store_lookup)
        if store_id is None:
            return request.user.is_superuser
        return stores.filter(pk=store_id).exists()

    def get_queryset(self, request):
        return scoped(request, super().get_queryset(request), self.store_lookup)

    def has_module_permission(self, request):
        return self._member(request)

    def has_view_permission(self, request, obj=None):
        return self._member(request)

    def has_add_permission(self, request, *args):
        return self._member(request) and self._writer(request)

    def has_change_permission(self, request, obj=None):
        return self._member(request) and self._writer(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._member(request) and self._writer(request, obj)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        related = db_field.related_model
        if related is Store:
            kwargs["queryset"] = writable_stores(request, self.write_roles).order_by("name")
        elif related is not None and any(f.name == "store" for f in related._meta.get_fields()):
            kwargs["queryset"] = scoped(request, related._default_manager.all())
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        related = db_field.related_model
        if related is not None and any(f.name == "store" for f in related._meta.get_fields()):
            kwargs["queryset"] = scoped(request, related._default_manager.all())
        return super().formfield_for_manytomany(db_field, request, **kwargs)


class StoreScopedInline:
    """For inlines of a scoped admin: the same choices and write rules as their parent."""

    write_roles = WRITE_ROLES

    def has_add_permission(self, request, obj=None):
        return request.user.is_superuser or (obj is not None and writable_stores(request, self.write_roles).filter(
            pk=_store_id(obj, "store") or getattr(obj, "pk", None)).exists())

    has_change_permission = has_delete_permission = has_add_permission

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_staff


OWNER_ONLY = (StoreRole.OWNER,)
