from __future__ import annotations

import datetime as dt
from decimal import Decimal

import factory

from ecpower.commerce.models import Customer, CustomerTag, LineItem, Order, Product, Store


class StoreFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Store

    name = factory.Sequence(lambda n: f"Store {n}")
    shopify_domain = factory.Sequence(lambda n: f"store-{n}.myshopify.com")
    time_zone = "Asia/Tokyo"


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Customer

    store = factory.SubFactory(StoreFactory)
    shopify_id = factory.Sequence(lambda n: 9_000_000_000_000 + n)
    email = factory.Sequence(lambda n: f"customer{n}@example.jp")
    first_name = "花子"
    last_name = "山田"
    country_code = "JP"
    province_code = "JP-13"


class CustomerTagFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CustomerTag

    customer = factory.SubFactory(CustomerFactory)
    store = factory.SelfAttribute("customer.store")
    name = "LINE連携"


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product

    store = factory.SubFactory(StoreFactory)
    handle = factory.Sequence(lambda n: f"product-{n}")
    title = factory.Sequence(lambda n: f"Product {n}")
    product_type = "緑茶"
    vendor = "静岡茶園"


class OrderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Order

    customer = factory.SubFactory(CustomerFactory)
    store = factory.SelfAttribute("customer.store")
    name = factory.Sequence(lambda n: f"#{1001 + n}")
    email = factory.LazyAttribute(lambda o: o.customer.email if o.customer else "")
    created_at = factory.Sequence(lambda n: dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=n))
    currency = "JPY"
    subtotal = Decimal("1000")
    total = Decimal("1000")


class LineItemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LineItem

    order = factory.SubFactory(OrderFactory)
    store = factory.SelfAttribute("order.store")
    title = "煎茶 やぶきた - 50g"
    quantity = 1
    unit_price = Decimal("1000")

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        """A line written behind the ingests' back: its order's products become unknown, as
        ``Order.product_ids`` requires, and the next facts refresh reads them from the lines."""
        line = super()._create(model_class, *args, **kwargs)
        Order.objects.filter(pk=line.order_id).update(product_ids=None)
        return line
