"""Initial (bulk) and incremental imports from the emulator into the store."""

import datetime as dt
from decimal import Decimal

from ecpower.commerce.models import Customer, CustomerTag, CustomerTagEvent, LineItem, Order, Product
from integrations.models import ShopifyConnection
from integrations.shopify.importer import import_changes, import_full
from tests.shopify_emulator import populate


def test_initial_bulk_import_brings_customers_products_orders_and_facts(connected_store, emulator):
    shop = emulator.shop
    populate(shop, 12)
    result = import_full(store=connected_store)

    assert Customer.objects.filter(store=connected_store).count() == 12
    assert Product.objects.filter(store=connected_store).count() == 2
    assert Order.objects.filter(store=connected_store).count() == len(shop.orders)
    assert result.fetched == {"customers": 12, "products": 2, "orders": len(shop.orders)}
    # Facts follow the counted-order rule: customer 3 has 3 orders, one cancelled.
    third = Customer.objects.get(store=connected_store, email="c3@example.jp")
    assert third.orders_count == 2
    assert third.amount_spent == Decimal("4200")  # sencha 1200 + cup 3000, not the cancelled sencha
    assert third.first_order_discount_code == "WELCOME10"
    assert third.first_order_utm_source == "line"
    assert LineItem.objects.filter(store=connected_store, product__handle="sencha").exists()
    guest = Order.objects.get(store=connected_store, customer__isnull=True)
    assert guest.total == Decimal("500")
    assert set(CustomerTag.objects.filter(store=connected_store).values_list("name", flat=True)) == {"LINE連携"}
    assert CustomerTagEvent.objects.filter(store=connected_store, source="import").count() == 6
    assert ShopifyConnection.objects.get(store=connected_store).imported_until is not None

    # A second full import changes nothing.
    again = import_full(store=connected_store)
    assert again.summary.customers.created == 0 and again.summary.orders.created == 0
    assert again.summary.customers.updated == 0


def test_incremental_import_reads_only_what_changed_since_the_last_run(connected_store, emulator):
    shop = emulator.shop
    populate(shop, 5)
    import_full(store=connected_store)
    mark = ShopifyConnection.objects.get(store=connected_store).imported_until

    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    changed = shop.customers[next(iter(shop.customers))]
    changed.update(tags=["VIP"], updated_at=later)
    new = shop.add_customer(email="new@example.jp", updated_at=later)
    shop.add_order(customer_id=new["id"], email=new["email"], created_at=later, total="8000", subtotal="8000",
                   line_items=[{"title": "煎茶", "sku": "SEN-100", "price": "8000", "quantity": 1}])

    result = import_changes(store=connected_store)
    assert result.fetched == {"customers": 2, "products": 0, "orders": 1}
    assert Customer.objects.get(store=connected_store, email="new@example.jp").orders_count == 1
    assert list(Customer.objects.get(store=connected_store, shopify_id=changed["id"]).tags.values_list(
        "name", flat=True)) == ["VIP"]
    assert ShopifyConnection.objects.get(store=connected_store).imported_until > mark


def test_incremental_without_a_previous_run_falls_back_to_the_full_import(connected_store, emulator):
    populate(emulator.shop, 3)
    result = import_changes(store=connected_store)
    assert result.fetched["customers"] == 3
