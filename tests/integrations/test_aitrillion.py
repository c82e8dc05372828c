"""AiTrillion tag mappings: reading real-looking tag sets, queries on mapped attributes (now and as of a
past day), preview before saving, tier movement from tag history."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import ValidationError

from ecpower.commerce.models import CustomerTag, CustomerTagEvent, TagEventAction
from integrations.aitrillion.mappings import attribute_movement, mapping_preview, tag_names_by_value
from integrations.models import TagMapping
from segments.query_language import parse
from segments.selectors import rule_members
from tests.factories import CustomerFactory, StoreFactory

pytestmark = pytest.mark.django_db

TAG_SETS = {
    "gold@example.jp": ["AIT-Tier-Gold", "LINE連携", "AIT-Plan-Premium-v2"],
    "gold2@example.jp": ["ait-tier-gold", "AIT-Affiliate-Influencer"],
    "silver@example.jp": ["AIT-Tier-Silver", "AIT-Popup-Signup"],
    "bronze@example.jp": ["AIT-Tier-Bronze", "VIP", "AIT-Plan-Basic-v1"],
    "plain@example.jp": ["LINE連携", "AIT-Tier-"],
}


@pytest.fixture
def store():
    store = StoreFactory(time_zone="Asia/Tokyo")
    for email, tags in TAG_SETS.items():
        customer = CustomerFactory(store=store, email=email)
        for tag in tags:
            CustomerTag.objects.create(store=store, customer=customer, name=tag)
    TagMapping.objects.create(store=store, attribute="loyalty_tier", kind="prefix", pattern="AIT-Tier-")
    TagMapping.objects.create(store=store, attribute="membership_plan", kind="regex", pattern=r"^AIT-Plan-(\w+)-v\d+$")
    TagMapping.objects.create(store=store, attribute="affiliate_group", kind="prefix", pattern="AIT-Affiliate-")
    TagMapping.objects.create(store=store, attribute="signup_source", kind="regex", pattern=r"^AIT-(Popup)-Signup$")
    return store


def emails(store, query: str, as_of=None) -> set[str]:
    return set(rule_members(store=store, tree=parse(query), as_of=as_of).values_list("email", flat=True))


def test_mappings_read_real_looking_tags_into_values(store):
    tiers = tag_names_by_value(store, "loyalty_tier")
    assert tiers == {"Bronze": {"AIT-Tier-Bronze"}, "Gold": {"AIT-Tier-Gold", "ait-tier-gold"},
                     "Silver": {"AIT-Tier-Silver"}}  # case variants are one value; "AIT-Tier-" has none
    assert tag_names_by_value(store, "membership_plan") == {"Basic": {"AIT-Plan-Basic-v1"},
                                                            "Premium": {"AIT-Plan-Premium-v2"}}
    assert tag_names_by_value(store, "signup_source") == {"Popup": {"AIT-Popup-Signup"}}


def test_queries_on_mapped_attributes(store):
    assert emails(store, "loyalty_tier = 'gold'") == {"gold@example.jp", "gold2@example.jp"}
    assert emails(store, "loyalty_tier != 'Gold'") == {"silver@example.jp", "bronze@example.jp"}
    assert emails(store, "loyalty_tier IS NULL") == {"plain@example.jp"}
    assert emails(store, "membership_plan IS NOT NULL") == {"gold@example.jp", "bronze@example.jp"}
    assert emails(store, "affiliate_group = 'Influencer' OR signup_source = 'Popup'") == {
        "gold2@example.jp", "silver@example.jp"}
    assert emails(store, "loyalty_tier = 'Platinum'") == set()
    TagMapping.objects.filter(attribute="affiliate_group").delete()
    assert len(emails(store, "affiliate_group IS NULL")) == 5  # no mapping: nobody has a value


def test_preview_before_saving_and_located_pattern_errors(store):
    preview = mapping_preview(store=store, kind="prefix", pattern="AIT-Tier-")
    assert preview.values == [("Gold", 2, ["AIT-Tier-Gold", "ait-tier-gold"]), ("Bronze", 1, ["AIT-Tier-Bronze"]),
                              ("Silver", 1, ["AIT-Tier-Silver"])]
    assert (preview.customers_with_value, preview.customers) == (4, 5)
    with pytest.raises(ValidationError, match="column 10"):
        mapping_preview(store=store, kind="regex", pattern="^AIT-Tier(")
    with pytest.raises(ValidationError, match="group"):
        mapping_preview(store=store, kind="regex", pattern="^AIT-Tier-.*$")


def history(store, email, *changes):
    customer = store.customers.get(email=email)
    for day, action, tag in changes:
        CustomerTagEvent.objects.create(store=store, customer=customer, name=tag, action=action,
                                        occurred_at=dt.datetime(2025, 6, day, 12, tzinfo=store.zone),
                                        source="webhook")


ADD, REMOVE = TagEventAction.ADDED, TagEventAction.REMOVED


@pytest.fixture
def tier_history(store):
    history(store, "gold@example.jp", (1, ADD, "AIT-Tier-Silver"), (10, REMOVE, "AIT-Tier-Silver"),
            (10, ADD, "AIT-Tier-Gold"))
    history(store, "silver@example.jp", (1, ADD, "AIT-Tier-Bronze"), (9, ADD, "AIT-Tier-Silver"),
            (9, REMOVE, "AIT-Tier-Bronze"))
    history(store, "bronze@example.jp", (12, ADD, "AIT-Tier-Bronze"))  # a first tier inside the window
    history(store, "gold2@example.jp", (1, ADD, "ait-tier-gold"), (3, ADD, "AIT-Tier-Bronze"),
            (3, REMOVE, "AIT-Tier-Bronze"))  # moved and back before the window: no movement
    history(store, "plain@example.jp", (2, ADD, "AIT-Tier-Gold"), (11, REMOVE, "AIT-Tier-Gold"))
    return store


def test_tier_movement_over_a_window_from_tag_history(tier_history):
    store = tier_history
    movement = attribute_movement(store=store, start=dt.datetime(2025, 6, 8, tzinfo=store.zone),
                                  end=dt.datetime(2025, 6, 15, tzinfo=store.zone))
    assert movement.moves == {("Silver", "Gold"): 1, ("Bronze", "Silver"): 1, (None, "Bronze"): 1,
                              ("Gold", None): 1}
    earlier = attribute_movement(store=store, start=dt.datetime(2025, 6, 1, tzinfo=store.zone),
                                 end=dt.datetime(2025, 6, 8, tzinfo=store.zone))
    assert earlier.moves == {(None, "Silver"): 1, (None, "Bronze"): 1, (None, "Gold"): 2}


def test_a_mapped_attribute_as_of_a_past_day_reads_the_tag_history(tier_history):
    store = tier_history
    assert emails(store, "loyalty_tier = 'Silver'", as_of=dt.date(2025, 6, 5)) == {"gold@example.jp"}
    assert emails(store, "loyalty_tier = 'Silver'", as_of=dt.date(2025, 6, 9)) == {"gold@example.jp",
                                                                                    "silver@example.jp"}
    assert emails(store, "loyalty_tier = 'Gold'", as_of=dt.date(2025, 6, 10)) == {
        "gold@example.jp", "gold2@example.jp", "plain@example.jp"}


def test_the_admin_previews_a_mapping_and_refuses_a_broken_pattern(store, staff_client):
    from django.urls import reverse

    url = reverse("admin:integrations_tagmapping_preview")
    result = staff_client.post(url, {"store": store.pk, "kind": "prefix", "pattern": "AIT-Tier-"}).json()
    assert result["ok"] and result["values"][0] == {"value": "Gold", "customers": 2,
                                                    "examples": ["AIT-Tier-Gold", "ait-tier-gold"]}
    assert result["summary"] == "4 of 5 customers have a value."
    broken = staff_client.post(url, {"store": store.pk, "kind": "regex", "pattern": "("}).json()
    assert not broken["ok"] and "Not a regular expression" in broken["errors"][0]
    add = staff_client.post(reverse("admin:integrations_tagmapping_add"),
                            {"store": store.pk, "attribute": "loyalty_tier", "kind": "regex", "pattern": "AIT-.*"})
    assert add.status_code == 200 and "Put the value in a group" in add.content.decode()
    assert TagMapping.objects.count() == 4


def test_mappings_preview_and_tier_movement_over_the_api(tier_history):
    from django.urls import reverse
    from rest_framework.test import APIClient

    from ecpower.commerce.access import api_key_create
    from ecpower.commerce.models import ApiKeyScope

    store = tier_history
    _key, raw = api_key_create(store=store, name="loyalty", scope=ApiKeyScope.READ_WRITE)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    preview = client.post(reverse("tag-mapping-preview"), {"store": store.pk, "kind": "prefix",
                                                           "pattern": "AIT-Plan-"}, format="json").json()
    assert [v["value"] for v in preview["values"]] == ["Basic-v1", "Premium-v2"]
    bad = client.post(reverse("tag-mapping-list"), {"store": store.pk, "attribute": "loyalty_tier", "kind": "regex",
                                                    "pattern": "AIT-(["}, format="json").json()["error"]
    assert bad["details"][0]["field"] == "pattern" and "column" in bad["details"][0]["message"]
    movement = client.get(reverse("store-tier-movement", args=[store.pk]),
                          {"start": "2025-06-08", "end": "2025-06-14"}).json()
    assert {(m["source"], m["target"]): m["customers"] for m in movement["moves"]} == {
        ("Silver", "Gold"): 1, ("Bronze", "Silver"): 1, (None, "Bronze"): 1, ("Gold", None): 1}
    assert client.get(reverse("store-tier-movement", args=[store.pk]), {"attribute": "x"}).status_code == 400


def test_partner_attributes_and_tier_movement_insights(tier_history, staff_client):
    from django.urls import reverse

    from segments.services import segment_create, segment_recompute

    store = tier_history
    segment = segment_create(store=store, name="Tiered", slug="tiered", query="loyalty_tier IS NOT NULL")
    segment_recompute(segment=segment)
    page = staff_client.get(reverse("admin:metrics_attributes", args=[segment.pk]))
    tables = {t.title: t.rows for t in page.context["tables"]}
    assert tables["Loyalty tier"] == [["Gold", 2, "50.0%", 2], ["Bronze", 1, "25.0%", 1], ["Silver", 1, "25.0%", 1]]
    movement = staff_client.get(reverse("admin:metrics_tier_movement") + f"?store={store.pk}"
                                "&start=2025-06-08&end=2025-06-14")
    assert sorted(movement.context["tables"][0].rows) == sorted(
        [["Silver", "Gold", 1], ["Bronze", "Silver", 1], ["(none)", "Bronze", 1], ["Gold", "(none)", 1]])
    api = staff_client.get(reverse("segment-attributes", args=[segment.pk])).json()
    assert api["attributes"]["loyalty_tier"][0] == {"value": "Gold", "members": 2, "store_customers": 2}
