"""A real Shopify emulator on loopback for each test, and a store connected to it."""

import datetime as dt

import pytest

from integrations.models import ShopifyConnection
from integrations.shopify.emulator.server import EmulatorServer
from integrations.shopify.emulator.state import PLANS, World

SHOP = "tea.myshopify.com"
TOKEN = "shpat_emulator_token"
SECRET = "custom-app-secret"


@pytest.fixture
def emulator(settings):
    world = World()
    shop = world.add_shop(SHOP, access_token=TOKEN, api_secret=SECRET, plan=PLANS["plus"])
    shop.bulk_seconds = 0.05
    with EmulatorServer(world) as server:
        settings.SHOPIFY_ADMIN_URL = server.admin_url()
        settings.SHOPIFY_BULK_POLL_SECONDS = 0.02
        server.shop = shop
        yield server


@pytest.fixture
def connected_store(store, emulator):
    ShopifyConnection.objects.create(store=store, access_token=TOKEN, api_secret=SECRET,
                                     connected_at=dt.datetime.now(dt.UTC),
                                     scopes="read_customers,write_customers,read_orders,read_all_orders")
    return store


def populate(shop, customers: int = 20, *, start=None) -> None:
    """A small tea shop: customers with tags, two products, orders (one cancelled, one guest)."""
    start = start or dt.datetime(2026, 1, 5, 1, 0, tzinfo=dt.UTC)
    sencha = shop.add_product(handle="sencha", title="煎茶", product_type="Tea", vendor="静岡茶園", tags=["tea"], updated_at=start,
                              variants=[{"sku": "SEN-100", "title": "100g", "price": "1200"}])
    cup = shop.add_product(handle="yunomi", title="湯呑", product_type="Tableware", vendor="有田", updated_at=start,
                           variants=[{"sku": "CUP-1", "title": "白", "price": "3000"}])
    for n in range(customers):
        customer = shop.add_customer(
            first_name="花子", last_name=f"山田{n}", email=f"c{n}@example.jp", tags=["LINE連携"] if n % 2 else [],
            email_marketing="SUBSCRIBED" if n % 3 == 0 else "NOT_SUBSCRIBED", country_code="JP",
            province_code="JP-13", city="渋谷区", created_at=start, updated_at=start)
        for k in range(n % 4):
            product = sencha if k % 2 == 0 else cup
            price = product["variants"][0]["price"]
            shop.add_order(
                customer_id=customer["id"], email=customer["email"],
                created_at=start + dt.timedelta(days=10 * n + 30 * k), total=price, subtotal=price,
                discount_codes=["WELCOME10"] if k == 0 else [], utm={"source": "line"} if k == 0 else {},
                cancelled_at=start + dt.timedelta(days=1) if (n, k) == (3, 2) else None,
                line_items=[{"title": product["title"], "sku": product["variants"][0]["sku"], "price": price,
                             "quantity": 1, "product_id": product["id"], "vendor": product["vendor"]}])
    shop.add_order(email="", created_at=start, total="500", subtotal="500",
                   line_items=[{"title": "煎茶", "sku": "SEN-100", "price": "500", "quantity": 1}])
