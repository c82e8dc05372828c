"""Fill an emulator shop from a store in our database (the demo store), so "Shopify" holds the same
customers, products and orders the back office shows, with the same Shopify ids."""

from __future__ import annotations

from collections import defaultdict

from ecpower.commerce.models import Customer, CustomerTag, LineItem, Order, Product, ProductTag, ProductVariant, Store
from integrations.shopify.emulator.state import Shop, World, now


def shop_from_store(world: World, store: Store, *, access_token: str, api_secret: str) -> Shop:
    shop = world.add_shop(store.shopify_domain, access_token=access_token, api_secret=api_secret, name=store.name)
    stamp = now()
    tags = defaultdict(list)
    for customer_id, name in CustomerTag.objects.filter(store=store).values_list("customer_id", "name"):
        tags[customer_id].append(name)
    shopify_ids = {}
    for c in Customer.objects.filter(store=store, shopify_id__isnull=False).iterator(chunk_size=5000):
        shopify_ids[c.pk] = c.shopify_id
        shop.add_customer(
            id=c.shopify_id, first_name=c.first_name, last_name=c.last_name, email=c.email, phone=c.phone,
            tags=tags.get(c.pk, []), note=c.note, state=c.state or "ENABLED", email_marketing=c.email_marketing,
            sms_marketing=c.sms_marketing, city=c.city, province_code=c.province_code, country_code=c.country_code,
            zip=c.zip, created_at=c.shopify_created_at or c.created_at, updated_at=c.shopify_updated_at or stamp)
    product_tags = defaultdict(list)
    for product_id, name in ProductTag.objects.filter(store=store).values_list("product_id", "name"):
        product_tags[product_id].append(name)
    variants = defaultdict(list)
    for v in ProductVariant.objects.filter(store=store).order_by("product_id", "position"):
        variants[v.product_id].append({"id": v.shopify_id or None, "sku": v.sku, "title": v.title,
                                       "price": str(v.price or 0)})
    product_ids = {}
    for p in Product.objects.filter(store=store):
        record = shop.add_product(id=p.shopify_id or None, handle=p.handle, title=p.title, product_type=p.product_type,
                                  vendor=p.vendor, tags=product_tags.get(p.pk, []), category=p.category,
                                  status=(p.status or "active").upper(), variants=variants.get(p.pk, []),
                                  updated_at=stamp)
        product_ids[p.pk] = record["id"]
    items = defaultdict(list)
    for i in LineItem.objects.filter(store=store).order_by("order_id", "position").iterator(chunk_size=10000):
        items[i.order_id].append({"title": i.title, "sku": i.sku, "vendor": i.vendor, "quantity": i.quantity,
                                  "price": str(i.unit_price), "discount": str(i.discount),
                                  "product_id": product_ids.get(i.product_id)})
    for o in Order.objects.filter(store=store).iterator(chunk_size=5000):
        utm = {k: getattr(o, f"utm_{k}") for k in ("source", "medium", "campaign", "content", "term")
               if getattr(o, f"utm_{k}")}
        shop.add_order(
            id=o.shopify_id or None, name=o.name, customer_id=shopify_ids.get(o.customer_id), email=o.email,
            created_at=o.created_at, processed_at=o.processed_at or o.created_at,
            updated_at=o.shopify_updated_at or o.created_at, cancelled_at=o.cancelled_at, test=o.test,
            source_name=o.source_name, discount_codes=[o.discount_code] if o.discount_code else [],
            tags=[t.strip() for t in o.tags.split(",") if t.strip()], currency=o.currency or store.currency,
            subtotal=str(o.subtotal), total_discounts=str(o.total_discounts), shipping=str(o.shipping),
            tax=str(o.tax), total=str(o.total), refunded=str(o.refunded_amount),
            financial_status=(o.financial_status or "paid").upper(), landing_site=o.landing_site,
            referring_site=o.referring_site, utm=utm, line_items=items.get(o.pk, []))
    return shop
