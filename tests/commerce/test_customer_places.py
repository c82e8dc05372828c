"""The customer list's country and province filters offer the places of the user's stores, found without
reading every customer."""

from __future__ import annotations

import pytest
from django.urls import reverse

from ecpower.commerce.models import StoreMembership, StoreRole
from ecpower.commerce.selectors import customer_places
from tests.factories import CustomerFactory, StoreFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def stores():
    tokyo_shop, paris_shop = StoreFactory(shopify_domain="a.myshopify.com"), StoreFactory(shopify_domain="b.myshopify.com")
    for country, province in (("JP", "JP-13"), ("JP", "JP-27"), ("JP", "JP-13"), ("US", "US-CA"), ("", ""),
                              ("JP", "")):
        CustomerFactory(store=tokyo_shop, country_code=country, province_code=province)
    CustomerFactory(store=paris_shop, country_code="FR", province_code="")
    return tokyo_shop, paris_shop


def choices(response, field: str) -> list[str]:
    spec = next(spec for spec in response.context["cl"].filter_specs if getattr(spec, "lookup_kwarg", "") == field)
    return list(spec.lookup_choices)


def test_each_place_once_per_stores_asked_for(stores):
    tokyo_shop, paris_shop = stores
    assert customer_places([tokyo_shop.pk]) == [("", ""), ("JP", ""), ("JP", "JP-13"), ("JP", "JP-27"),
                                                ("US", "US-CA")]
    assert customer_places([tokyo_shop.pk, paris_shop.pk])[-2:] == [("JP", "JP-27"), ("US", "US-CA")]
    assert ("FR", "") in customer_places([tokyo_shop.pk, paris_shop.pk])
    assert customer_places([]) == []


def test_a_staff_member_filters_by_the_places_of_its_store_only(client, django_user_model, stores):
    tokyo_shop, _paris_shop = stores
    user = django_user_model.objects.create_user("hanako", "h@example.jp", "pw", is_staff=True)
    StoreMembership.objects.create(user=user, store=tokyo_shop, role=StoreRole.VIEWER)
    client.force_login(user)
    url = reverse("admin:commerce_customer_changelist")
    page = client.get(url)
    assert choices(page, "country_code") == ["", "JP", "US"]  # not the other store's FR
    assert choices(page, "province_code") == ["", "JP-13", "JP-27", "US-CA"]
    japan = client.get(url + "?country_code=JP")
    assert choices(japan, "province_code") == ["", "JP-13", "JP-27"]  # the chosen country's
    assert japan.context["cl"].result_count == 4
    osaka = client.get(url + "?country_code=JP&province_code=JP-27")
    assert osaka.context["cl"].result_count == 1


def test_a_superuser_sees_every_stores_places_or_the_chosen_ones(client, django_user_model, stores):
    _tokyo_shop, paris_shop = stores
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.jp", "pw"))
    url = reverse("admin:commerce_customer_changelist")
    assert choices(client.get(url), "country_code") == ["", "FR", "JP", "US"]
    assert choices(client.get(url + f"?store__id__exact={paris_shop.pk}"), "country_code") == ["FR"]
