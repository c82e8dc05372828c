"""The GraphQL client against the emulator: throttling, retries, errors, pagination, versions."""

import pytest

from integrations.http import PartnerAuthError, PartnerUnavailable
from integrations.shopify.client import MaxCostExceeded, ShopifyClient, UserErrors, gid
from integrations.shopify.emulator.state import Plan
from tests.shopify_emulator import SHOP, TOKEN, populate

PAGE = "query C($first: Int!, $after: String) { customers(first: $first, after: $after) { " \
       "pageInfo { hasNextPage endCursor } nodes { id email numberOfOrders } } }"


def client(emulator, **kwargs):
    sleeps = []
    kwargs.setdefault("sleep", sleeps.append)
    c = ShopifyClient(SHOP, TOKEN, admin_url=emulator.admin_url(), **kwargs)
    c.sleeps = sleeps
    return c


def test_pagination_reads_every_customer_once_and_numbers_arrive_as_strings(emulator):
    populate(emulator.shop, 30)
    nodes = list(client(emulator).paginate(PAGE, {}, "customers", page_size=7))
    assert len({n["id"] for n in nodes}) == 30
    assert all(isinstance(n["numberOfOrders"], str) for n in nodes)


def test_throttled_answers_are_waited_out_with_the_bucket_arithmetic(emulator):
    emulator.shop.bucket.plan = Plan(maximum=100.0, restore_rate=50.0)
    emulator.shop.bucket.available = 0
    c = ShopifyClient(SHOP, TOKEN, admin_url=emulator.admin_url())  # real sleeps: about 0.2 s
    populate(emulator.shop, 3)
    assert len(list(c.paginate(PAGE, {}, "customers", page_size=3))) == 3
    assert c.calls >= 2  # the first call was THROTTLED (HTTP 200), then retried


def test_max_cost_exceeded_halves_the_page(emulator):
    populate(emulator.shop, 5)
    query = ("query O($first: Int!, $after: String) { orders(first: $first, after: $after) { pageInfo { hasNextPage "
             "endCursor } nodes { id lineItems(first: 50) { nodes { id title originalUnitPriceSet { shopMoney { amount } } } } } } }")
    c = client(emulator)
    with pytest.raises(MaxCostExceeded):
        c.graphql(query, {"first": 250})
    assert len(list(c.paginate(query, {}, "orders"))) == len(emulator.shop.orders)


def test_server_errors_are_retried_then_reported_as_transient(emulator):
    populate(emulator.shop, 2)
    emulator.shop.faults.http_error_rate = 0.5
    assert len(list(client(emulator, max_retries=10).paginate(PAGE, {}, "customers"))) == 2
    emulator.shop.faults.http_error_rate = 1.0
    with pytest.raises(PartnerUnavailable) as info:
        client(emulator, max_retries=2).graphql(PAGE, {"first": 1})
    assert info.value.permanent is False


def test_a_wrong_token_is_a_permanent_auth_error(emulator):
    c = ShopifyClient(SHOP, "shpat_wrong", admin_url=emulator.admin_url())
    with pytest.raises(PartnerAuthError) as info:
        c.shop_info()
    assert info.value.permanent and info.value.status == 401


def test_user_errors_are_raised_typed(emulator):
    c = client(emulator)
    with pytest.raises(UserErrors) as info:
        c.mutate("mutation { tagsAdd(id: \"gid://shopify/Customer/1\", tags: [\"x\"]) { node { id } "
                 "userErrors { field message } } }", None, "tagsAdd")
    assert info.value.errors[0]["field"] == ["id"]


def test_a_retired_version_is_answered_by_the_oldest_supported_and_noted(emulator, caplog):
    seen = []
    c = client(emulator, api_version="2024-10", on_version=seen.append)
    c.shop_info()
    assert seen == ["2025-10"]
    assert "instead of 2024-10" in caplog.text


def test_batched_tag_changes_report_each_refused_customer(emulator):
    populate(emulator.shop, 2)
    first, second = list(emulator.shop.customers)
    emulator.shop.customers[second]["tags"] = [f"t{i}" for i in range(250)]
    failures = client(emulator).tags_change("add", [(first, ["ecp-vip"]), (second, ["ecp-vip"]), (1, ["x"])])
    assert set(failures) == {second, 1}
    assert "250" in failures[second]
    assert "ecp-vip" in emulator.shop.customers[first]["tags"]
    assert gid("Customer", 5) == "gid://shopify/Customer/5"
