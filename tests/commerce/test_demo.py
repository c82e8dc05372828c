import datetime as dt

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Count, Q

from ecpower.commerce.models import Customer, CustomerTag, LineItem, Order, Product, Store

UNTIL = "2026-11-21"


def _fingerprint(store):
    return (
        list(Customer.objects.filter(store=store).order_by("shopify_id").values_list("shopify_id", "email", "last_name", "province_code", "orders_count", "amount_spent")),
        list(Order.objects.filter(store=store).order_by("name").values_list("name", "customer__shopify_id", "created_at", "total", "discount_code", "utm_campaign", "cancelled_at", "ordinal")),
        sorted(CustomerTag.objects.filter(store=store).values_list("customer__shopify_id", "name")),
    )


def test_same_seed_and_date_give_the_same_store(db):
    call_command("generate_demo_store", "--store", "a.myshopify.com", "--customers", "300", "--seed", "7", "--until", UNTIL)
    first = _fingerprint(Store.objects.get(shopify_domain="a.myshopify.com"))
    call_command("generate_demo_store", "--store", "a.myshopify.com", "--customers", "300", "--seed", "7", "--until", UNTIL, "--replace")
    assert _fingerprint(Store.objects.get(shopify_domain="a.myshopify.com")) == first
    call_command("generate_demo_store", "--store", "b.myshopify.com", "--customers", "300", "--seed", "8", "--until", UNTIL)
    assert _fingerprint(Store.objects.get(shopify_domain="b.myshopify.com"))[0] != first[0]


def test_demo_store_has_the_shape_of_a_japanese_d2c_brand(db):
    call_command("generate_demo_store", "--store", "demo.myshopify.com", "--customers", "2000", "--seed", "1", "--until", UNTIL)
    store = Store.objects.get(shopify_domain="demo.myshopify.com")
    buyers = Customer.objects.filter(store=store, orders_count__gte=1)
    one_time_share = buyers.filter(orders_count=1).count() / buyers.count()
    assert 0.5 <= one_time_share <= 0.7
    assert buyers.filter(orders_count__gte=10).exists()  # a long tail of loyal customers
    assert Customer.objects.filter(store=store, orders_count=0).exists()  # prospects
    orders = Order.objects.filter(store=store)
    assert orders.filter(customer__isnull=True).exists()  # guest orders
    assert orders.filter(cancelled_at__isnull=False).exists()
    assert orders.filter(refunded_amount__gt=0).exists()
    assert orders.filter(test=True).exists()
    firsts = orders.filter(ordinal=1)
    assert 0.2 < firsts.exclude(discount_code="").count() / firsts.count() < 0.5
    assert firsts.exclude(utm_campaign="").exists()
    assert not orders.filter(ordinal__gt=1).exclude(utm_campaign="").exists()  # campaigns tag first orders
    span = orders.order_by("created_at").first().created_at, orders.order_by("-created_at").first().created_at
    assert (span[1] - span[0]) > dt.timedelta(days=700)
    december = orders.filter(created_at__month=12).count()
    february = orders.filter(created_at__month=2).count()
    assert december > february  # お歳暮 season
    tags = set(CustomerTag.objects.filter(store=store).values_list("name", flat=True))
    assert {"LINE連携", "subscription", "AIT-Tier-Gold", "AIT-Tier-Bronze"} <= tags
    assert Product.objects.filter(store=store, tags__name="color:blue").count() >= 2
    assert not LineItem.objects.filter(store=store, product__isnull=True).exists()
    prefectures = Customer.objects.filter(store=store).values("province_code").annotate(n=Count("id"))
    assert len(prefectures) >= 15
    assert Customer.objects.filter(store=store).filter(Q(last_name="佐藤") | Q(last_name="鈴木")).exists()


def test_demo_refuses_to_overwrite_without_replace(db):
    call_command("generate_demo_store", "--store", "a.myshopify.com", "--customers", "10", "--seed", "1", "--until", UNTIL)
    with pytest.raises(CommandError, match="already has data; pass --replace"):
        call_command("generate_demo_store", "--store", "a.myshopify.com", "--customers", "10", "--seed", "1", "--until", UNTIL)



def test_demo_writes_the_same_facts_and_ordinals_as_the_facts_service(db):
    """The generator computes facts while it writes (for speed); they must equal the service's."""
    from ecpower.commerce.services import customer_facts_refresh

    call_command("generate_demo_store", "--store", "a.myshopify.com", "--customers", "400", "--seed", "3", "--until", UNTIL)
    store = Store.objects.get(shopify_domain="a.myshopify.com")
    columns = ("pk", *Customer.FACT_FIELDS)
    generated = list(Customer.objects.filter(store=store).order_by("pk").values_list(*columns))
    ordinals = list(Order.objects.filter(store=store).order_by("pk").values_list("pk", "ordinal"))
    line_copies = list(LineItem.objects.filter(store=store).order_by("pk")
                       .values_list("pk", "customer_id", "ordered_at", "ordinal"))
    assert any(row[1] > 1 for row in generated)
    assert any(ordinal is None for *_, ordinal in line_copies)  # lines of cancelled and test orders
    customer_facts_refresh(store=store)
    assert list(Order.objects.filter(store=store).order_by("pk").values_list("pk", "ordinal")) == ordinals
    assert list(LineItem.objects.filter(store=store).order_by("pk")
                .values_list("pk", "customer_id", "ordered_at", "ordinal")) == line_copies
    assert list(Customer.objects.filter(store=store).order_by("pk").values_list(*columns)) == generated
