"""The public-app install flow through the emulator's consent screen and token endpoint."""

import datetime as dt
from urllib.parse import urlparse

import pytest
from django.utils import timezone

from integrations.models import ConnectionMethod, ShopifyConnection
from integrations.shopify.connection import client_for
from integrations.shopify.oauth import query_hmac_valid
from tests.shopify_emulator import SHOP


@pytest.fixture
def app(settings, emulator):
    settings.SHOPIFY_API_KEY = emulator.world.app_key
    settings.SHOPIFY_API_SECRET = emulator.world.app_secret
    settings.PUBLIC_URL = "http://testserver"


def follow_consent(response):
    """Play the merchant: open the consent URL at the emulator, which redirects back with a code."""
    import requests

    consent = requests.get(response["Location"], allow_redirects=False, timeout=5)
    assert consent.status_code == 302
    back = urlparse(consent.headers["Location"])
    return f"{back.path}?{back.query}"


def test_install_connects_the_shop_with_an_expiring_token_that_refreshes(app, staff_client, emulator, db):
    response = staff_client.get(f"/shopify/install?shop={SHOP}")
    assert response.status_code == 302 and "/admin/oauth/authorize?" in response["Location"]
    response = staff_client.get(follow_consent(response))
    assert response.status_code == 302

    link = ShopifyConnection.objects.get(store__shopify_domain=SHOP)
    assert link.method == ConnectionMethod.OAUTH and link.access_token.startswith("shpat_")
    assert link.refresh_token and link.token_expires_at > timezone.now()
    assert client_for(link.store).shop_info()["myshopifyDomain"] == SHOP

    old = link.access_token
    ShopifyConnection.objects.filter(pk=link.pk).update(token_expires_at=timezone.now() - dt.timedelta(minutes=1))
    client_for(link.store).shop_info()  # refreshed on the way
    link.refresh_from_db()
    assert link.access_token != old and link.token_expires_at > timezone.now()


def test_a_tampered_callback_is_refused(app, staff_client, emulator, db):
    response = staff_client.get(f"/shopify/install?shop={SHOP}")
    url = follow_consent(response).replace("code=", "code=x")
    assert staff_client.get(url).status_code == 400
    assert not ShopifyConnection.objects.exists()


def test_install_refuses_foreign_domains_and_bad_hmac(app, staff_client, db):
    assert staff_client.get("/shopify/install?shop=evil.example.com").status_code == 400
    assert staff_client.get(f"/shopify/install?shop={SHOP}&hmac=00&timestamp=1").status_code == 400


def test_query_hmac_recipe():
    import hashlib
    import hmac

    params = {"shop": SHOP, "timestamp": "1", "code": "abc"}
    params["hmac"] = hmac.new(b"s", b"code=abc&shop=tea.myshopify.com&timestamp=1", hashlib.sha256).hexdigest()
    assert query_hmac_valid(params, "s") and not query_hmac_valid(params, "t")


def test_a_shop_whose_store_is_being_deleted_is_not_installed_until_it_is_gone(app, staff_client, emulator, db):
    from ecpower.commerce.models import Store
    from ecpower.commerce.services import store_deletion_request

    store = Store.objects.create(shopify_domain=SHOP, name="old")
    store_deletion_request(store=store)  # its job has not run yet
    response = staff_client.get(f"/shopify/install?shop={SHOP}")
    assert response.status_code == 400 and "is being deleted here" in response.content.decode()

    Store.objects.filter(pk=store.pk).update(deletion_requested_at=None)  # asked for during the consent screen
    response = staff_client.get(f"/shopify/install?shop={SHOP}")
    store_deletion_request(store=store)
    response = staff_client.get(follow_consent(response))
    assert response.status_code == 400 and "is being deleted here" in response.content.decode()
    assert not ShopifyConnection.objects.filter(store=store).exists()
