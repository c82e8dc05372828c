"""Metrics pages in the admin: their context (what the charts draw), the tables and the CSV downloads."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest
from django.urls import reverse

from ecpower.commerce.models import CustomerTag
from ecpower.commerce.services import customer_facts_refresh
from metrics.models import Campaign, Journey, JourneyStage
from metrics.snapshots import history_rebuild
from segments.services import segment_create, segment_recompute
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db
JST = dt.timezone(dt.timedelta(hours=9))


@pytest.fixture
def shop():
    store = StoreFactory(time_zone="Asia/Tokyo")
    a, b = CustomerFactory(store=store), CustomerFactory(store=store)
    CustomerTag.objects.create(store=store, customer=a, name="LINE連携")
    OrderFactory(store=store, customer=a, created_at=dt.datetime(2025, 3, 1, 10, tzinfo=JST), total=Decimal(3000))
    OrderFactory(store=store, customer=a, created_at=dt.datetime(2025, 3, 4, 10, tzinfo=JST), total=Decimal(1000))
    OrderFactory(store=store, customer=b, created_at=dt.datetime(2025, 3, 3, 10, tzinfo=JST), total=Decimal(2000))
    customer_facts_refresh(store=store)
    buyers = segment_create(store=store, name="購入者", slug="buyers", query="number_of_orders >= 1")
    repeat = segment_create(store=store, name="リピーター", slug="repeat", query="number_of_orders >= 2")
    for segment in (buyers, repeat):
        segment_recompute(segment=segment)
    history_rebuild(store=store, since=dt.date(2025, 3, 1), until=dt.date(2025, 3, 5))
    return store, buyers, repeat


def csv_rows(response) -> list[list[str]]:
    text = b"".join(response.streaming_content if response.streaming else [response.content]).decode("utf-8-sig")
    return list(csv.reader(io.StringIO(text)))


def test_the_segment_page_charts_every_kpi_day_by_day(staff_client, shop):
    _store, buyers, _repeat = shop
    response = staff_client.get(reverse("admin:metrics_segment", args=[buyers.pk]))
    assert response.status_code == 200
    data = response.context["chart_data"]
    assert data["labels"] == [f"2025-03-0{d}" for d in range(1, 6)]
    members = next(c for c in data["charts"] if c["id"] == "members")["datasets"][0]["data"]
    assert members == [1, 1, 2, 2, 2]
    flow = next(c for c in data["charts"] if c["id"] == "flow")["datasets"]
    assert flow[0]["data"] == [1, 0, 1, 0, 0] and flow[1]["data"] == [0, 0, 0, 0, 0]
    revenue = next(c for c in data["charts"] if c["id"] == "revenue")["datasets"]
    assert revenue[0]["data"] == [3000.0, 0.0, 2000.0, 1000.0, 0.0]
    habits = next(c for c in data["charts"] if c["id"] == "habits")["datasets"]
    assert habits[0]["data"][-1] == 50.0  # repeat rate in percent
    assert 'id="metrics-charts"' in response.content.decode() and "chart-4.5.1.umd.min.js" in response.content.decode()
    rows = csv_rows(staff_client.get(reverse("admin:metrics_segment", args=[buyers.pk]) + "?format=csv"))
    assert rows[0][:4] == ["date", "period_days", "members", "joined"] and len(rows) == 6


def test_rebuild_button_queues_a_backfill_job_and_shows_it(staff_client, shop):
    _store, buyers, _repeat = shop
    response = staff_client.post(reverse("admin:metrics_segment", args=[buyers.pk]))
    assert response.status_code == 302 and "/integrations/syncjob/" in response["Location"]


def test_compare_puts_segments_side_by_side(staff_client, shop):
    _store, buyers, repeat = shop
    url = reverse("admin:metrics_compare") + f"?ids={buyers.pk}&ids={repeat.pk}&kpi=members"
    response = staff_client.get(url)
    datasets = response.context["chart_data"]["charts"][0]["datasets"]
    assert [(d["label"], d["data"]) for d in datasets] == [("リピーター", [0, 0, 0, 1, 1]),
                                                            ("購入者", [1, 1, 2, 2, 2])]
    rows = csv_rows(staff_client.get(url + "&format=csv"))
    assert rows[0] == ["date", "repeat", "buyers"] and rows[-1] == ["2025-03-05", "1", "2"]


def test_insight_pages_and_their_csv(staff_client, shop):
    store, buyers, repeat = shop
    tags = staff_client.get(reverse("admin:metrics_tags", args=[buyers.pk]) + "?format=csv")
    assert csv_rows(tags)[1] == ["LINE連携", "1", "50.0%", "1", "50.0%", "1.00"]
    assert staff_client.get(reverse("admin:metrics_products", args=[buyers.pk])).status_code == 200
    cohorts = staff_client.get(reverse("admin:metrics_cohorts") + f"?store={store.pk}")
    assert cohorts.context["tables"][0].rows[0][:3] == ["2025-03", 2, Decimal("3000.00")]
    rfm = staff_client.get(reverse("admin:metrics_rfm") + f"?store={store.pk}")
    assert rfm.status_code == 200 and sum(sum(cells) for cells in rfm.context["summary"].grid.values()) == 2
    assert csv_rows(staff_client.get(reverse("admin:metrics_rfm") + f"?store={store.pk}&format=csv"))[0][0] == "Group"
    journey = Journey.objects.create(store=store, name="growth")
    JourneyStage.objects.create(journey=journey, segment=buyers, position=0)
    JourneyStage.objects.create(journey=journey, segment=repeat, position=1)
    page = staff_client.get(reverse("admin:metrics_journey", args=[journey.pk]))
    assert page.status_code == 200 and page.context["tables"][1].rows == [["購入者", 2], ["リピーター", 1]]
    campaign = Campaign.objects.create(store=store, name="spring", starts_on=dt.date(2025, 3, 1),
                                       ends_on=dt.date(2025, 3, 31))
    campaign.segments.add(buyers)
    result = staff_client.get(reverse("admin:metrics_campaign", args=[campaign.pk]))
    assert result.context["tables"][0].rows[0][:4] == ["購入者", "targets", 2, 2]
    for name in ("journey", "campaign"):
        changelist = staff_client.get(reverse(f"admin:metrics_{name}_changelist"))
        assert changelist.status_code == 200
    assert staff_client.get(reverse("admin:metrics_segmentsnapshot_changelist")).status_code == 200
    assert staff_client.get(reverse("admin:metrics_pipelinerun_changelist")).status_code == 200


def test_segment_groups_become_journeys_from_the_admin(staff_client, shop):
    from segments.models import SegmentGroup

    store, buyers, repeat = shop
    group = SegmentGroup.objects.create(store=store, name="growth")
    group.segments.add(buyers, repeat)
    response = staff_client.post(reverse("admin:segments_segmentgroup_changelist"),
                                 {"action": "journey_selected", "_selected_action": [group.pk]})
    assert response.status_code == 302
    journey = Journey.objects.get(group=group)
    assert [s.segment_id for s in journey.stages.all()] == [repeat.pk, buyers.pk]  # by name: リ before 購
