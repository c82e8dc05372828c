"""Webhooks sent by the emulator over real HTTP to the live server: signatures, duplicates, order, topics."""

import datetime as dt
import json
from pathlib import Path

import pytest

from ecpower.commerce.models import Customer, CustomerTag, CustomerTagEvent, Order
from integrations.models import AppliedTag, ShopifyConnection, WebhookDelivery, WebhookStatus
from integrations.shopify.emulator.server import WebhookSender, customer_payload, order_payload
from integrations.shopify.importer import import_full
from segments.models import Membership
from segments.services import segment_create, segment_recompute
from tests.shopify_emulator import populate

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sender(live_server, connected_store, emulator):
    return WebhookSender(emulator.shop, f"{live_server.url}/api/v1/webhooks/shopify/")


def test_a_bad_signature_is_refused_and_nothing_is_stored(sender, connected_store, emulator):
    populate(emulator.shop, 1)
    customer = next(iter(emulator.shop.customers.values()))
    response = sender.send("customers/create", customer_payload(customer), secret="not-the-secret")
    assert response.status_code == 401
    assert not WebhookDelivery.objects.exists()
    assert not Customer.objects.exists()


def test_duplicates_are_ignored_and_out_of_order_updates_are_safe(sender, connected_store, emulator):
    shop = emulator.shop
    record = shop.add_customer(email="ji@example.jp", first_name="Ji", updated_at=dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
    newer = customer_payload(record)
    older = {**newer, "first_name": "Old", "updated_at": "2026-11-01T00:00:00Z"}

    assert sender.send("customers/update", newer, event_id="e1").json() == {"status": "accepted"}
    assert sender.send("customers/update", newer, event_id="e1").json() == {"status": "duplicate"}
    assert sender.send("customers/update", older, event_id="e0").status_code == 200
    assert Customer.objects.get(shopify_id=record["id"]).first_name == "Ji"
    assert WebhookDelivery.objects.get(event_id="e0").status == WebhookStatus.IGNORED
    assert WebhookDelivery.objects.count() == 2


def test_an_order_webhook_updates_facts_and_memberships_at_once(sender, connected_store, emulator):
    shop = emulator.shop
    populate(shop, 4)
    import_full(store=connected_store)
    repeat = segment_create(store=connected_store, name="Repeat", query="number_of_orders >= 2")
    segment_recompute(segment=repeat)
    first_timer = Customer.objects.get(store=connected_store, email="c1@example.jp")
    assert first_timer.orders_count == 1
    assert not Membership.objects.filter(segment=repeat, customer=first_timer).exists()

    order = shop.add_order(customer_id=first_timer.shopify_id, email=first_timer.email, total="2400",
                           subtotal="2400", line_items=[{"title": "煎茶", "sku": "SEN-100", "price": "2400"}])
    assert sender.send("orders/create", order_payload(shop, order)).status_code == 200
    first_timer.refresh_from_db()
    assert first_timer.orders_count == 2
    assert Membership.objects.filter(segment=repeat, customer=first_timer).exists()

    order["cancelled_at"] = dt.datetime.now(dt.UTC).replace(microsecond=0)
    order["updated_at"] = order["cancelled_at"]
    sender.send("orders/cancelled", order_payload(shop, order))
    first_timer.refresh_from_db()
    assert first_timer.orders_count == 1
    assert not Membership.objects.filter(segment=repeat, customer=first_timer).exists()
    assert Order.objects.get(shopify_id=order["id"]).cancelled_at is not None


def test_tag_webhooks_update_tags_history_and_the_ledger(sender, connected_store, emulator):
    populate(emulator.shop, 2)
    import_full(store=connected_store)
    customer = Customer.objects.get(email="c0@example.jp")
    AppliedTag.objects.create(store=connected_store, customer=customer, tag="ecp-vip")
    CustomerTag.objects.create(store=connected_store, customer=customer, name="ecp-vip")
    gid = f"gid://shopify/Customer/{customer.shopify_id}"
    sender.send("customer.tags_added", {"customerId": gid, "tags": ["AIT-Tier-Gold"], "occurredAt": "2026-11-20T01:00:00Z"})
    sender.send("customer.tags_removed", {"customerId": gid, "tags": ["ecp-vip"], "occurredAt": "2026-11-21T01:00:00Z"})
    assert set(customer.tags.values_list("name", flat=True)) == {"AIT-Tier-Gold"}
    assert not AppliedTag.objects.exists()  # removed in Shopify by someone else: no longer ours to track
    event = CustomerTagEvent.objects.get(customer=customer, source="webhook", name="AIT-Tier-Gold")
    assert event.occurred_at == dt.datetime(2026, 11, 20, 1, tzinfo=dt.UTC)


def test_compliance_topics_have_their_effects(sender, connected_store, emulator, settings, tmp_path, mailoutbox):
    settings.MEDIA_ROOT = str(tmp_path)
    connected_store.notification_email = "dpo@example.jp"
    connected_store.save()
    populate(emulator.shop, 4)
    import_full(store=connected_store)
    customer = Customer.objects.get(email="c2@example.jp")
    orders = list(Order.objects.filter(customer=customer).values_list("shopify_id", flat=True))
    shop_ref = {"shop_id": 1, "shop_domain": connected_store.shopify_domain}

    sender.send("customers/data_request", {**shop_ref, "customer": {"id": customer.shopify_id, "email": customer.email},
                                           "orders_requested": orders, "data_request": {"id": 77}})
    export = json.loads(next(Path(tmp_path, "data-requests").rglob("*request-77.json")).read_text())
    assert export["customer"]["email"] == "c2@example.jp" and len(export["orders"]) == 2
    assert "data request" in mailoutbox[0].subject

    total_before = sum(o.total for o in Order.objects.filter(customer=customer))
    sender.send("customers/redact", {**shop_ref, "customer": {"id": customer.shopify_id}, "orders_to_redact": orders})
    customer.refresh_from_db()
    assert (customer.email, customer.first_name, customer.last_name) == ("", "", "")
    assert sum(o.total for o in Order.objects.filter(customer=customer)) == total_before  # totals kept
    assert not Order.objects.filter(customer=customer).exclude(email="").exists()

    sender.send("app/uninstalled", {"id": 1, "domain": connected_store.shopify_domain})
    assert not ShopifyConnection.objects.get(store=connected_store).is_connected
    # After uninstall the public-app secret (not the forgotten custom-app one) signs shop/redact.
    settings.SHOPIFY_API_SECRET = "public-app-secret"
    sender.send("shop/redact", shop_ref, secret="public-app-secret")
    assert not Customer.objects.filter(store=connected_store).exists()
    assert not Order.objects.filter(store=connected_store).exists()
