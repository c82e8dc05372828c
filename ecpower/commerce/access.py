"""Who may see and change which store: staff store memberships and partner API keys.

``stores_for`` is the one place that answers "which stores can this request see"; the admin and
the API both scope by it. API keys look like ``ecp_<prefix>_<secret>``; only a SHA-256 of the
whole key is stored (the secret is 256 random bits, so a fast hash is enough) and the key is
shown once, when made.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.db.models import QuerySet
from django.utils import timezone

from ecpower.commerce.models import ApiKey, ApiKeyScope, Store, StoreMembership, StoreRole

KEY_PREFIX = "ecp_"
WRITE_ROLES = (StoreRole.EDITOR, StoreRole.OWNER)
# last_used_at is written at most this often per key (seconds), not on every request.
LAST_USED_RESOLUTION = 60


def _hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_create(*, store: Store, name: str, scope: str = ApiKeyScope.READ, user=None) -> tuple[ApiKey, str]:
    """A new key and its raw value (shown to the user once; never stored)."""
    prefix = secrets.token_hex(6)
    raw = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(store=store, name=name, prefix=prefix, key_hash=_hash(raw), scope=scope,
                                created_by=user)
    return key, raw


def api_key_revoke(*, key: ApiKey) -> None:
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def api_key_check(raw_key: str) -> ApiKey | None:
    """The live key ``raw_key`` is, or None (unknown, malformed, revoked)."""
    if not raw_key.startswith(KEY_PREFIX) or raw_key.count("_") < 2:
        return None
    prefix = raw_key[len(KEY_PREFIX):].split("_", 1)[0]
    key = ApiKey.objects.select_related("store").filter(prefix=prefix, revoked_at__isnull=True).first()
    if key is None or not hmac.compare_digest(key.key_hash, _hash(raw_key)):
        return None
    now = timezone.now()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key


def stores_for(*, user=None, api_key: ApiKey | None = None, deleting: bool = False) -> QuerySet[Store]:
    """The stores a key or a user may see: the key's store; every store for a superuser; the
    stores a staff user is a member of. A store being deleted is left out unless ``deleting`` (the admin
    shows it, read-only, until it is gone)."""
    stores = Store.objects.all() if deleting else Store.objects.live()
    if api_key is not None:
        return stores.filter(pk=api_key.store_id)
    if user is None or not user.is_authenticated:
        return stores.none()
    if user.is_superuser:
        return stores
    return stores.filter(memberships__user=user)


def can_write(*, store_id: int, user=None, api_key: ApiKey | None = None) -> bool:
    if api_key is not None:
        return api_key.store_id == store_id and api_key.scope == ApiKeyScope.READ_WRITE
    if user is None or not user.is_authenticated:
        return False
    if user.is_superuser:
        return True
    return StoreMembership.objects.filter(user=user, store_id=store_id, role__in=WRITE_ROLES).exists()
