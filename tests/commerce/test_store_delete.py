"""Deleting a store in the admin: a page that counts its rows, then a background job that deletes them all
set-based, the store out of the daily runs, the API and webhooks meanwhile."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from ecpower.commerce.models import Customer, LineItem, Order, Store
from ecpower.commerce.services import customer_facts_refresh
from metrics.models import PipelineRun
from segments.models import Membership, Segment
from segments.services import segment_create, segment_recompute
from tests.factories import CustomerFactory, LineItemFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db


def store_with(customers: int) -> Store:
    store = StoreFactory()
    for _ in range(customers):
        order = OrderFactory(store=store, customer=CustomerFactory(store=store))
        LineItemFactory(store=store, order=order)
    customer_facts_refresh(store=store)
    segment_recompute(segment=segment_create(store=store, name="Buyers", slug="buyers", query="number_of_orders >= 1"))
    return store


def test_the_confirmation_counts_each_kind_of_row_of_the_store_in_a_fixed_number_of_queries(staff_client):
    small, large = store_with(2), store_with(12)
    pages, queries = [], []
    for store in (small, large):
        with CaptureQueriesContext(connection) as captured:
            response = staff_client.get(reverse("admin:commerce_store_delete", args=[store.pk]))
        assert response.status_code == 200
        pages.append(response.content.decode())
        queries.append(len(captured))
    assert queries[0] == queries[1]
    page = pages[1]
    for line in ("Customers: 12", "Orders: 12", "Condition segments: 1",
                 "Line items: all of them (not counted)", "Memberships: all of them (not counted)"):
        assert line in page or line.replace("Condition segments", "Segments") in page, line
    assert "Customer: " not in page  # no customer listed one by one


def test_confirming_deletes_the_store_and_all_of_its_rows_and_nothing_of_another(staff_client):
    kept, gone = store_with(2), store_with(3)
    response = staff_client.post(reverse("admin:commerce_store_delete", args=[gone.pk]), {"post": "yes"}, follow=True)
    assert "is being deleted in the background" in response.content.decode()
    assert not Store.objects.filter(pk=gone.pk).exists()  # the job ran when the request committed
    for model in (Customer, Order, LineItem, Segment):
        assert not model.objects.filter(store_id=gone.pk).exists(), model
    assert not Membership.objects.filter(segment__store_id=gone.pk).exists()
    assert Customer.objects.filter(store=kept).count() == 2
    assert Membership.objects.filter(segment__store=kept).count() == 2


def test_confirming_does_not_count_the_rows_again(staff_client):
    store = store_with(2)
    with CaptureQueriesContext(connection) as captured:
        staff_client.post(reverse("admin:commerce_store_delete", args=[store.pk]), {"post": "yes"})
    assert not [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"]]
    assert not Store.objects.filter(pk=store.pk).exists()


def test_a_customers_delete_page_counts_their_rows_in_a_fixed_number_of_queries(staff_client):
    """A customer's join/leave events are titled by customer and segment; listed one by one, each would be
    looked up (two queries per event)."""
    queries = []
    for orders in (1, 6):
        store = StoreFactory()
        customer = CustomerFactory(store=store)
        for _ in range(orders):
            LineItemFactory(store=store, order=OrderFactory(store=store, customer=customer))
        customer_facts_refresh(store=store)
        for n in range(orders):  # a segment per order count, each with one join event
            segment_recompute(segment=segment_create(store=store, name=f"{n}+", slug=f"at-least-{n}",
                                                     query=f"number_of_orders >= {n + 1}"))
        with CaptureQueriesContext(connection) as captured:
            page = staff_client.get(reverse("admin:commerce_customer_delete", args=[customer.pk])).content.decode()
        queries.append(len(captured))
        assert f"Memberships: {orders}" in page and f"Membership events: {orders}" in page
    assert queries[0] == queries[1]


def pushed_to_channel_talk(store: Store) -> None:
    """Each pushed customer keeps a row of what was last written to Channel Talk."""
    from integrations.models import ChannelTalkUser

    for customer in Customer.objects.filter(store=store):
        ChannelTalkUser.objects.create(store=store, customer=customer, member_id=str(customer.pk), pushed_at=timezone.now())


@pytest.mark.django_db(transaction=True)  # each step of the job commits, and a dangling link fails its commit
def test_a_store_pushed_to_channel_talk_is_deleted_with_its_channel_talk_users(staff_client):
    from integrations.models import ChannelTalkUser

    store = store_with(2)
    pushed_to_channel_talk(store)
    response = staff_client.post(reverse("admin:commerce_store_delete", args=[store.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Store.objects.filter(pk=store.pk).exists()
    assert not ChannelTalkUser.objects.filter(store_id=store.pk).exists()


def test_a_stores_data_deleted_for_shopifys_shop_redact_leaves_no_dangling_link():
    from ecpower.commerce.services import store_data_delete

    store = store_with(2)
    pushed_to_channel_talk(store)
    store_data_delete(store=store)
    connection.check_constraints()  # what the commit would check
    assert not Customer.objects.filter(store=store).exists()


def test_every_row_that_goes_with_a_customer_product_or_order_is_deleted_by_store_data_delete():
    """A model added later with a cascading link to a customer, product or order must be in the set-based
    delete's list, or a store holding its rows can no longer be deleted (its link would be left dangling)."""
    from django.db.models.deletion import get_candidate_relations_to_delete

    from ecpower.admin_deletion import cascades
    from ecpower.commerce.models import Product
    from ecpower.commerce.services import store_data_models

    listed = {model._meta.label for model in store_data_models()}
    reached, todo = set(), [Customer, Product, Order]
    while todo:
        model = todo.pop()
        for relation in get_candidate_relations_to_delete(model._meta):
            child = relation.related_model._meta.concrete_model
            if cascades(relation.on_delete) and child._meta.label not in reached:
                reached.add(child._meta.label)
                todo.append(child)
    assert reached - listed == set()


@pytest.fixture
def rich_store():
    """A store with everything a store can own: customers and orders, segments and lists, a journey and a
    campaign, a daily run, jobs, an endpoint with messages and attempts, a Channel Talk connection."""
    import uuid

    from integrations.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
    from tests.api.test_api import make_store

    store = make_store("gone.myshopify.com")
    message = WebhookMessage.objects.create(
        store=store, endpoint=WebhookEndpoint.objects.get(store=store), event="sync_job.finished",
        delivery_id=uuid.uuid4(), payload={}, next_attempt_at=timezone.now())
    WebhookAttempt.objects.create(message=message, status_code=500)
    return store


def owned_rows(store_id: int) -> dict[str, int]:
    """Every row of every table that names the store."""
    from django.apps import apps

    counts = {}
    for model in apps.get_models():
        if any(field.name == "store" and field.many_to_one for field in model._meta.fields):
            counts[model._meta.label] = model._base_manager.filter(store_id=store_id).count()
    return {label: n for label, n in counts.items() if n}


def test_a_requested_deletion_hides_the_store_from_daily_runs_api_and_webhooks_until_its_job_deletes_it(rich_store):
    from ecpower.commerce.access import stores_for
    from ecpower.commerce.models import ApiKey
    from ecpower.commerce.services import store_deletion_request
    from ecpower.commerce.tasks import store_delete_run
    from metrics.pipeline import daily_dispatch

    kept = store_with(1)
    key = ApiKey.objects.create(store=rich_store, name="partner", prefix="p", key_hash="h")
    assert store_deletion_request(store=rich_store)  # the job is queued when this transaction commits
    assert not store_deletion_request(store=rich_store)  # marked once

    assert list(stores_for(api_key=key)) == []
    assert Store.objects.live().get() == kept
    PipelineRun.objects.all().delete()
    daily_dispatch(now=timezone.now().replace(hour=12, minute=0) + dt.timedelta(days=1))  # 21:00 in Tokyo
    assert set(PipelineRun.objects.values_list("store_id", flat=True)) == {kept.pk}
    assert owned_rows(rich_store.pk)  # nothing is deleted until the job runs

    assert store_delete_run(rich_store.pk) == "deleted"
    assert owned_rows(rich_store.pk) == {}
    assert not Store.objects.filter(pk=rich_store.pk).exists()
    assert Customer.objects.filter(store=kept).count() == 1
    assert store_delete_run(rich_store.pk) == "nothing to delete"  # run twice


def test_the_job_deletes_only_a_store_whose_deletion_was_requested():
    from ecpower.commerce.tasks import store_delete_run

    store = store_with(1)
    assert store_delete_run(store.pk) == "nothing to delete"
    assert Customer.objects.filter(store=store).count() == 1


def test_a_deletion_stopped_half_way_starts_over_and_finishes(rich_store):
    """The job deletes a table per transaction: stopped after some (a worker killed, an error), the store is
    still marked, and a second run deletes what is left."""
    from ecpower.commerce.services import store_data_models, store_deletion_request
    from ecpower.commerce.tasks import store_delete_run

    store_deletion_request(store=rich_store)
    for model in store_data_models()[:5]:  # as far as the first job got
        model.objects.filter(store=rich_store).delete()
    Store.objects.filter(pk=rich_store.pk).update(deletion_step=5)
    assert Customer.objects.filter(store=rich_store).exists()

    assert store_delete_run(rich_store.pk) == "deleted"
    assert owned_rows(rich_store.pk) == {}


def test_deleting_a_store_again_from_its_page_finishes_a_deletion_that_stopped(staff_client):
    from ecpower.commerce.services import store_deletion_request

    store = store_with(2)
    store_deletion_request(store=store)  # its job stopped: the store stays marked, its rows there
    page = staff_client.get(reverse("admin:commerce_store_delete", args=[store.pk]))
    assert page.status_code == 200 and "Customers: 2" in page.content.decode()
    staff_client.post(reverse("admin:commerce_store_delete", args=[store.pk]), {"post": "yes"})
    assert not Store.objects.filter(pk=store.pk).exists()


def test_a_store_being_deleted_is_read_only_in_the_admin_and_shows_its_progress(staff_client):
    from ecpower.commerce.services import store_deletion_request, store_deletion_steps

    store = store_with(1)
    store_deletion_request(store=store)
    Store.objects.filter(pk=store.pk).update(deletion_step=3)
    listing = staff_client.get(reverse("admin:commerce_store_changelist")).content.decode()
    assert f"Being deleted: step 3 of {store_deletion_steps()}" in listing
    assert "delete_selected" not in listing  # stores are deleted one by one, from their page
    page = staff_client.get(reverse("admin:commerce_store_change", args=[store.pk])).content.decode()
    assert 'name="_save"' not in page  # nothing of it can be changed any more
    customer = Customer.objects.get(store=store)
    response = staff_client.post(reverse("admin:commerce_customer_change", args=[customer.pk]), {"email": "x@example.jp"})
    assert response.status_code == 403


def test_webhooks_for_a_store_being_deleted_are_ignored():
    """Shopify keeps sending until the app is uninstalled; nothing is written to a store on its way out."""
    from ecpower.commerce.services import store_deletion_request
    from integrations.models import WebhookDelivery, WebhookStatus
    from integrations.webhooks import webhook_process

    store = store_with(1)
    store_deletion_request(store=store)
    delivery = WebhookDelivery.objects.create(store=store, shop_domain=store.shopify_domain, topic="customers/create",
                                              event_id="e1", payload={"id": 987, "email": "new@example.jp"})
    assert webhook_process(delivery.pk) == WebhookStatus.IGNORED
    delivery.refresh_from_db()
    assert delivery.result == "the store is being deleted"
    assert Customer.objects.filter(store=store).count() == 1
