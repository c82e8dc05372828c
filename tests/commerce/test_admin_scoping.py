"""The admin follows store memberships: staff see their stores only; viewers read, editors change,
owners manage members and keys; another store's rows are not found, in custom pages too."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse

from ecpower.commerce.models import StoreMembership, StoreRole
from ecpower.commerce.services import customer_facts_refresh
from metrics.snapshots import history_rebuild
from segments.services import segment_create, segment_recompute
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db


def make_store(domain):
    store = StoreFactory(shopify_domain=domain)
    customer = CustomerFactory(store=store, email=f"c@{domain}")
    OrderFactory(store=store, customer=customer, created_at=dt.datetime(2025, 3, 1, tzinfo=dt.UTC))
    customer_facts_refresh(store=store)
    segment = segment_create(store=store, name=f"Buyers of {domain}", slug="buyers", query="number_of_orders >= 1")
    segment_recompute(segment=segment)
    history_rebuild(store=store, since=dt.date(2025, 3, 1), until=dt.date(2025, 3, 2))
    return store, customer, segment


@pytest.fixture
def two_stores():
    return make_store("a.myshopify.com"), make_store("b.myshopify.com")


def staff(client, django_user_model, store, role, name="member"):
    user = django_user_model.objects.create_user(name, f"{name}@example.jp", "pw", is_staff=True)
    StoreMembership.objects.create(user=user, store=store, role=role)
    client.force_login(user)
    return client


def test_a_viewer_sees_only_its_store_and_changes_nothing(client, django_user_model, two_stores):
    (a, a_customer, a_segment), (_b, b_customer, b_segment) = two_stores
    client = staff(client, django_user_model, a, StoreRole.VIEWER)
    customers = client.get(reverse("admin:commerce_customer_changelist"))
    assert customers.status_code == 200 and list(customers.context["cl"].result_list) == [a_customer]
    assert client.get(reverse("admin:commerce_customer_change", args=[b_customer.pk])).status_code == 302
    segments = client.get(reverse("admin:segments_conditionsegment_changelist"))
    assert list(segments.context["cl"].result_list) == [a_segment]
    assert "recompute_selected" not in segments.context["action_form"].fields["action"].choices.__repr__()
    page = client.get(reverse("admin:segments_conditionsegment_change", args=[a_segment.pk]))
    assert page.status_code == 200 and page.context["has_change_permission"] is False
    assert client.post(reverse("admin:segments_conditionsegment_recompute", args=[a_segment.pk])).status_code == 403
    assert client.get(reverse("admin:segments_conditionsegment_add")).status_code == 403
    for name, args in (("segments_conditionsegment_members", [b_segment.pk]), ("metrics_segment", [b_segment.pk]),
                       ("metrics_tags", [b_segment.pk])):
        assert client.get(reverse(f"admin:{name}", args=args)).status_code == 404, name
    assert client.get(reverse("admin:metrics_segment", args=[a_segment.pk])).status_code == 200
    assert client.post(reverse("admin:metrics_segment", args=[a_segment.pk])).status_code == 403
    compare = client.get(reverse("admin:metrics_compare") + f"?ids={a_segment.pk}&ids={b_segment.pk}")
    assert [d["label"] for d in compare.context["chart_data"]["charts"][0]["datasets"]] == [a_segment.name]
    assert list(compare.context["stores"]) == [a]


def test_an_editor_changes_its_store_and_only_its_store(client, django_user_model, two_stores):
    (a, _a_customer, a_segment), (b, _b_customer, b_segment) = two_stores
    client = staff(client, django_user_model, a, StoreRole.EDITOR)
    assert client.post(reverse("admin:segments_conditionsegment_recompute", args=[a_segment.pk])).status_code == 302
    assert client.post(reverse("admin:segments_conditionsegment_recompute", args=[b_segment.pk])).status_code == 404
    add = client.get(reverse("admin:segments_conditionsegment_add"))
    assert list(add.context["adminform"].form.fields["store"].queryset) == [a]
    make = client.get(reverse("admin:segments_listsegment_add"))
    assert list(make.context["form"].fields["store"].queryset) == [a]
    assert list(make.context["form"].fields["source"].queryset) == [a_segment]
    # Members and API keys are the owner's business.
    assert client.get(reverse("admin:commerce_storemembership_add")).status_code == 403
    assert client.get(reverse("admin:commerce_apikey_add")).status_code == 403
    preview = client.post(reverse("admin:segments_conditionsegment_preview"),
                          {"store": b.pk, "query": "number_of_orders >= 1"}).json()
    assert preview["ok"] is False  # another store is no store


def test_an_owner_manages_members_and_staff_without_a_store_see_nothing(client, django_user_model, two_stores):
    (a, _a_customer, _a_segment), (_b, _b_customer, _b_segment) = two_stores
    owner = staff(client, django_user_model, a, StoreRole.OWNER, name="owner")
    assert owner.get(reverse("admin:commerce_storemembership_add")).status_code == 200
    form = owner.get(reverse("admin:commerce_apikey_add")).context["adminform"].form
    assert list(form.fields["store"].queryset) == [a]
    owner.logout()
    loner = django_user_model.objects.create_user("loner", "l@example.jp", "pw", is_staff=True)
    client.force_login(loner)
    assert client.get(reverse("admin:index")).context["app_list"] == []
    assert client.get(reverse("admin:commerce_customer_changelist")).status_code == 403
