"""Connecting a store to its Shopify shop, and the client every Shopify job uses."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from ecpower.commerce.models import Store
from integrations.http import PartnerError
from integrations.models import ConnectionMethod, ShopifyConnection
from integrations.shopify.client import ShopifyClient


class NotConnected(PartnerError):
    permanent = True


def connection_for(store: Store) -> ShopifyConnection:
    link = ShopifyConnection.objects.filter(store=store).first()
    if link is None or not link.is_connected:
        raise NotConnected(_("%(shop)s is not connected to Shopify.") % {"shop": store.shopify_domain})
    return link


def client_for(store: Store, **kwargs) -> ShopifyClient:
    """A client for the store's shop; records the API version Shopify actually answers with."""
    link = connection_for(store)
    if link.method == ConnectionMethod.OAUTH and link.token_expires_at and link.refresh_token:
        if link.token_expires_at <= timezone.now() + dt.timedelta(minutes=5):
            from integrations.shopify.oauth import token_refresh

            link = token_refresh(link)

    def remember(version: str) -> None:
        if version != link.answered_version:
            ShopifyConnection.objects.filter(pk=link.pk).update(answered_version=version)
            link.answered_version = version

    return ShopifyClient(store.shopify_domain, link.access_token, api_version=link.api_version or None,
                         on_version=remember, **kwargs)


@transaction.atomic
def connect_with_token(*, store: Store, access_token: str, api_secret: str = "", api_version: str = "",
                       check: bool = True) -> ShopifyConnection:
    """Connect with a custom app's Admin API token. With ``check``, the token is tried first."""
    if check:
        ShopifyClient(store.shopify_domain, access_token, api_version=api_version or None).shop_info()
    link, _created = ShopifyConnection.objects.select_for_update().get_or_create(store=store)
    link.method = ConnectionMethod.CUSTOM_APP
    link.access_token = access_token
    if api_secret:
        link.api_secret = api_secret
    link.api_version = api_version
    link.connected_at = timezone.now()
    link.disconnected_at = None
    link.save()
    return link


def disconnect(*, store: Store) -> None:
    """Forget the tokens (the app was uninstalled). Data stays until shop/redact asks otherwise."""
    ShopifyConnection.objects.filter(store=store).update(
        access_token="", refresh_token="", token_expires_at=None, disconnected_at=timezone.now()
    )


def webhook_secrets(store: Store | None) -> list[str]:
    """Secrets that may have signed this store's webhooks: its custom app's, then the public app's."""
    found = []
    if store is not None:
        link = ShopifyConnection.objects.filter(store=store).first()
        if link and link.api_secret:
            found.append(link.api_secret)
    if settings.SHOPIFY_API_SECRET:
        found.append(settings.SHOPIFY_API_SECRET)
    return found
