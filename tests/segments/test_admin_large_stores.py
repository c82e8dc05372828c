"""The admin where a store is large: delete pages that count what goes instead of listing every row, lists
that count and filter without reading every row, and titles that name instead of ids."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from metrics.models import SegmentSnapshot, SnapshotCursor, SnapshotMember
from metrics.snapshots import snapshots_update
from segments.models import Membership, MembershipEvent, Segment, SegmentVersion
from segments.services import segment_create, segment_recompute
from tests.factories import CustomerFactory, StoreFactory

pytestmark = pytest.mark.django_db


def tagged_segment(customers: int):
    store = StoreFactory()
    for _ in range(customers):
        CustomerFactory(store=store).tags.create(store=store, name="vip")
    segment = segment_create(store=store, name="VIP", slug="vip", query="customer_tags CONTAINS 'vip'")
    segment_recompute(segment=segment)
    return segment


def confirmation(staff_client, segment):
    url = reverse("admin:segments_conditionsegment_delete", args=[segment.pk])
    with CaptureQueriesContext(connection) as queries:
        response = staff_client.get(url)
    assert response.status_code == 200
    return response.content.decode(), len(queries)


def test_the_confirmation_counts_the_rows_that_go_and_its_queries_do_not_grow_with_them(staff_client):
    small, large = tagged_segment(3), tagged_segment(40)
    page, small_queries = confirmation(staff_client, small)
    # The summary: each kind of row with how many go (memberships, their join events, the version).
    assert "<li>Memberships: 3</li>" in page or "<li>メンバーシップ: 3</li>" in page
    assert "∈" not in page  # no membership listed one by one
    assert f'href="/admin/segments/conditionsegment/{small.pk}/change/"' in page
    page, large_queries = confirmation(staff_client, large)
    assert "Memberships: 40" in page or "メンバーシップ: 40" in page
    assert large_queries == small_queries


def test_confirming_deletes_the_segment_with_its_rows_and_nothing_of_another(staff_client):
    kept, gone = tagged_segment(2), tagged_segment(5)
    snapshots_update(store=gone.store)  # a day's snapshot, its kept members and cursor
    assert SnapshotMember.objects.filter(segment=gone).count() == 5
    response = staff_client.post(reverse("admin:segments_conditionsegment_delete", args=[gone.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Segment.objects.filter(pk=gone.pk).exists()
    for model in (Membership, MembershipEvent, SegmentVersion, SegmentSnapshot, SnapshotMember, SnapshotCursor):
        assert not model.objects.filter(segment_id=gone.pk).exists(), model
    assert Membership.objects.filter(segment=kept).count() == 2


def test_the_bulk_delete_action_counts_every_chosen_segment(staff_client):
    first, second = tagged_segment(2), tagged_segment(3)
    response = staff_client.post(reverse("admin:segments_conditionsegment_changelist"),
                                 {"action": "delete_selected", "_selected_action": [first.pk, second.pk]})
    page = response.content.decode()
    assert "Memberships: 5" in page or "メンバーシップ: 5" in page
    assert "Condition segments: 2" in page or "条件型セグメント: 2" in page


def test_an_event_and_a_snapshot_are_titled_by_their_customer_segment_and_day(staff_client):
    segment = tagged_segment(1)
    event = MembershipEvent.objects.get(segment=segment)
    page = staff_client.get(reverse("admin:segments_membershipevent_change", args=[event.pk])).content.decode()
    assert f"<h2>{event.customer} · {event.get_kind_display()} · VIP · {event.date}</h2>" in page
    snapshots_update(store=segment.store)
    snapshot = SegmentSnapshot.objects.get(segment=segment)
    page = staff_client.get(reverse("admin:metrics_segmentsnapshot_change", args=[snapshot.pk])).content.decode()
    assert f"<h2>VIP · {snapshot.date}</h2>" in page


def test_a_filtered_list_of_events_does_not_count_every_event_of_the_database(staff_client):
    segment, _other = tagged_segment(2), tagged_segment(3)
    url = reverse("admin:segments_membershipevent_changelist")
    with CaptureQueriesContext(connection) as queries:
        response = staff_client.get(url, {"segment__id__exact": segment.pk})
    assert response.status_code == 200
    counts = [q["sql"] for q in queries.captured_queries
              if "COUNT(" in q["sql"] and "segments_membershipevent" in q["sql"]]
    assert counts and all("WHERE" in sql for sql in counts)
    assert response.context["cl"].result_count == 2


def test_the_lists_of_orders_and_events_read_no_distinct_values_of_their_whole_table(staff_client):
    """Filter choices and date hierarchies that scan every row would cost seconds per page at a large store."""
    segment = tagged_segment(2)
    from tests.factories import OrderFactory

    OrderFactory(store=segment.store, utm_campaign="autumn")
    for name in ("admin:commerce_order_changelist", "admin:segments_membershipevent_changelist"):
        with CaptureQueriesContext(connection) as queries:
            response = staff_client.get(reverse(name))
        assert response.status_code == 200
        assert not [q["sql"] for q in queries.captured_queries if "DISTINCT" in q["sql"]], name
    found = staff_client.get(reverse("admin:commerce_order_changelist"), {"q": "autumn"})
    assert found.context["cl"].result_count == 1  # a campaign is searched for instead


def test_no_model_a_segment_store_or_customer_deletion_reaches_protects_its_link():
    """Where one did, the counted pages would hand over to Django's, which names the protecting rows."""
    from ecpower.admin_deletion import cascade_querysets, protection_possible
    from ecpower.commerce.models import Customer, Store

    for model in (Segment, Store, Customer):
        assert not protection_possible([model, *cascade_querysets(model.objects.none())]), model
