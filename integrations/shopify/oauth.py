"""Public-app install (authorization code grant) and expiring offline-token refresh.

``/shopify/install?shop=…`` (with Shopify's HMAC when Shopify sends the merchant) redirects to the
shop's consent screen with a one-time ``state``; ``/shopify/callback`` checks the state, the HMAC
(hex, over the sorted query) and the shop domain, trades the code for an expiring offline token
(``expiring=1``) and stores it encrypted. ``token_refresh`` swaps the refresh token before expiry.
Both views need a logged-in staff user: this is a self-hosted back office, not an App Store app.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import time

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext as _

from ecpower.commerce.models import Store
from integrations.http import PartnerAuthError, PartnerError, shared_session
from integrations.models import ConnectionMethod, ShopifyConnection

SHOP_DOMAIN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9\-]*\.myshopify\.com$")
MAX_CLOCK_SKEW = 24 * 3600


def query_hmac_valid(params: dict[str, str], secret: str) -> bool:
    """Shopify's request HMAC: hex HMAC-SHA256 of the sorted ``k=v`` pairs without hmac/signature."""
    given = params.get("hmac", "")
    message = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("hmac", "signature"))
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return bool(given) and hmac.compare_digest(digest, given)


def _shop_url(shop: str) -> str:
    return settings.SHOPIFY_ADMIN_URL.format(shop=shop).rstrip("/")


def _configured() -> bool:
    return bool(settings.SHOPIFY_API_KEY and settings.SHOPIFY_API_SECRET)


@staff_member_required
def install(request: HttpRequest) -> HttpResponse:
    shop = request.GET.get("shop", "").strip().lower()
    if not _configured():
        return HttpResponseBadRequest(_("Set SHOPIFY_API_KEY and SHOPIFY_API_SECRET to install the public app."))
    if not SHOP_DOMAIN.match(shop):
        return HttpResponseBadRequest(_("%(shop)s is not a myshopify.com domain.") % {"shop": shop})
    if "hmac" in request.GET and not query_hmac_valid(request.GET.dict(), settings.SHOPIFY_API_SECRET):
        return HttpResponseBadRequest(_("The install link's signature is wrong."))
    if _being_deleted(shop):
        return HttpResponseBadRequest(_being_deleted_message(shop))
    state = secrets.token_urlsafe(24)
    request.session["shopify_oauth"] = {"state": state, "shop": shop}
    params = {"client_id": settings.SHOPIFY_API_KEY, "scope": settings.SHOPIFY_SCOPES, "state": state,
              "redirect_uri": settings.PUBLIC_URL.rstrip("/") + reverse("shopify-oauth-callback")}
    return HttpResponseRedirect(f"{_shop_url(shop)}/admin/oauth/authorize?{urlencode(params)}")


@staff_member_required
def callback(request: HttpRequest) -> HttpResponse:
    params = request.GET.dict()
    expected = request.session.pop("shopify_oauth", None) or {}
    shop = params.get("shop", "").lower()
    if not expected or not secrets.compare_digest(expected.get("state", ""), params.get("state", "")):
        return HttpResponseBadRequest(_("The install state does not match; start the install again."))
    if shop != expected.get("shop") or not SHOP_DOMAIN.match(shop):
        return HttpResponseBadRequest(_("The shop in the answer is not the one being installed."))
    if not query_hmac_valid(params, settings.SHOPIFY_API_SECRET):
        return HttpResponseBadRequest(_("Shopify's signature on the answer is wrong."))
    if abs(time.time() - int(params.get("timestamp") or 0)) > MAX_CLOCK_SKEW:
        return HttpResponseBadRequest(_("The answer is too old; start the install again."))
    try:
        answer = _token_request(shop, {"code": params.get("code", ""), "expiring": "1"})
    except PartnerError as exc:
        return HttpResponseBadRequest(_("Shopify did not give a token: %(error)s") % {"error": exc})
    with transaction.atomic():
        store, _created = Store.objects.get_or_create(shopify_domain=shop, defaults={"name": shop.split(".")[0]})
        if store.being_deleted:  # its deletion was asked for during the consent
            return HttpResponseBadRequest(_being_deleted_message(shop))
        link, _new = ShopifyConnection.objects.select_for_update().get_or_create(store=store)
        _store_token(link, answer)
        link.method = ConnectionMethod.OAUTH
        link.connected_at = timezone.now()
        link.disconnected_at = None
        link.save()
    messages.success(request, _("%(shop)s is connected.") % {"shop": shop})
    return HttpResponseRedirect(reverse("admin:integrations_shopifyconnection_change", args=[link.pk]))


def _being_deleted(shop: str) -> bool:
    """Whether this domain's store is being deleted: connecting it now would hand the merchant's token to a
    store the deletion job is about to remove (the domain is unique, so a new store waits for it to go)."""
    return Store.objects.being_deleted().filter(shopify_domain=shop).exists()


def _being_deleted_message(shop: str) -> str:
    return _("The store %(shop)s is being deleted here. Install the app again once it has gone from the list "
             "of stores.") % {"shop": shop}


def _token_request(shop: str, form: dict) -> dict:
    body = {"client_id": settings.SHOPIFY_API_KEY, "client_secret": settings.SHOPIFY_API_SECRET, **form}
    response = shared_session().post(f"{_shop_url(shop)}/admin/oauth/access_token", data=body,
                                     timeout=settings.SHOPIFY_TIMEOUT)
    if response.status_code in (400, 401, 403):
        raise PartnerAuthError(response.text[:200], status=response.status_code)
    if response.status_code != 200:
        raise PartnerError(f"HTTP {response.status_code}", status=response.status_code)
    return response.json()


def _store_token(link: ShopifyConnection, answer: dict) -> None:
    link.access_token = answer["access_token"]
    link.scopes = answer.get("scope", link.scopes)
    if answer.get("refresh_token"):
        link.refresh_token = answer["refresh_token"]
        link.token_expires_at = timezone.now() + dt.timedelta(seconds=int(answer.get("expires_in") or 3600))
    else:
        link.refresh_token = ""
        link.token_expires_at = None


def token_refresh(link: ShopifyConnection) -> ShopifyConnection:
    """Swap the refresh token for a new access token (and the new refresh token, kept every time)."""
    with transaction.atomic():
        locked = ShopifyConnection.objects.select_for_update().select_related("store").get(pk=link.pk)
        if locked.token_expires_at and locked.token_expires_at > timezone.now() + dt.timedelta(minutes=5):
            return locked  # another worker refreshed it meanwhile
        answer = _token_request(locked.store.shopify_domain,
                                {"grant_type": "refresh_token", "refresh_token": locked.refresh_token})
        _store_token(locked, answer)
        locked.save(update_fields=["access_token", "refresh_token", "token_expires_at", "scopes"])
    return locked
