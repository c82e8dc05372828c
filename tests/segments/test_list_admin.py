"""The admin's list pages: make a list each way, live preview, origin and match report, export, actions."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from segments.models import ListSegment, Membership, Segment, SegmentKind
from segments.services import segment_create, segment_recompute
from tests.factories import CustomerFactory, StoreFactory


@pytest.fixture
def shop(db):
    store = StoreFactory(shopify_domain="tea.myshopify.com", name="茶舗")
    people = [CustomerFactory(store=store, email=f"p{i}@example.jp", shopify_id=8000 + i) for i in range(5)]
    for i, tags in enumerate([["vip"], ["vip", "line"], ["line"], ["unsub", "line"], []]):
        for tag in tags:
            people[i].tags.create(store=store, name=tag)
    segments = {}
    for slug in ("vip", "line", "unsub"):
        segments[slug] = segment_create(store=store, name=slug.upper(), slug=slug,
                                        query=f"customer_tags CONTAINS '{slug}'")
        segment_recompute(segment=segments[slug])
    return store, people, segments


def make(staff_client, **data):
    return staff_client.post(reverse("admin:segments_listsegment_add"), {"description": "", **data})


def test_make_a_list_with_the_builder(shop, staff_client):
    store, people, seg = shop
    response = make(staff_client, store=store.pk, name="Campaign", slug="campaign", origin="expression",
                    any_of=[seg["vip"].pk, seg["line"].pk], minus=[seg["unsub"].pk], holdout_percent="25", seed="3")
    assert response.status_code == 302, response.content.decode()[:3000]
    made = ListSegment.objects.get(slug="campaign")
    assert made.expression == "(line | vip) - unsub" and made.member_count == 3 and made.holdout_count == 1
    page = staff_client.get(reverse("admin:segments_listsegment_change", args=[made.pk])).content.decode()
    assert "(line | vip) - unsub" in page and "25 % · 1 held out · seed 3" in page


def test_make_a_list_from_a_query_a_snapshot_and_an_expression(shop, staff_client):
    store, people, seg = shop
    assert make(staff_client, store=store.pk, name="Q", slug="q", origin="query",
                query="customer_tags CONTAINS 'vip'").status_code == 302
    assert make(staff_client, store=store.pk, name="S", slug="s", origin="snapshot",
                source=seg["line"].pk).status_code == 302
    assert make(staff_client, store=store.pk, name="E", slug="e", origin="expression",
                expression="vip & line").status_code == 302
    counts = dict(ListSegment.objects.values_list("slug", "member_count"))
    assert counts == {"q": 2, "s": 3, "e": 1}


def test_make_a_list_shows_located_errors_and_makes_nothing(shop, staff_client):
    store, _people, seg = shop
    page = make(staff_client, store=store.pk, name="Bad", origin="expression", expression="vip | nope")
    assert page.status_code == 200 and "line 1, column 7: There is no segment &#x27;nope&#x27;" in page.content.decode()
    page = make(staff_client, store=store.pk, name="Bad", origin="query", query="number_of_orders >")
    assert page.status_code == 200 and "line 1, column" in page.content.decode()
    page = make(staff_client, store=store.pk, name="Bad", slug="vip", origin="expression", expression="line")
    assert "already exists" in page.content.decode()
    other = StoreFactory()
    page = make(staff_client, store=other.pk, name="Bad", origin="snapshot", source=seg["vip"].pk)
    assert "Choose segments of the store" in page.content.decode()
    assert not Segment.objects.filter(kind=SegmentKind.LIST).exists()


def test_make_a_list_from_a_csv_and_download_the_match_report(shop, staff_client):
    store, people, _seg = shop
    data = "メールアドレス\r\np0@example.jp\r\nghost@example.jp\r\np0@example.jp\r\n8002\r\n".encode("cp932")
    response = make(staff_client, store=store.pk, name="Upload", slug="upload", origin="csv",
                    csv_file=SimpleUploadedFile("顧客.csv", data, content_type="text/csv"))
    assert response.status_code == 302, response.content.decode()[:3000]
    made = ListSegment.objects.get(slug="upload")
    assert set(Membership.objects.filter(segment=made).values_list("customer_id", flat=True)) == {
        people[0].pk, people[2].pk}
    page = staff_client.get(reverse("admin:segments_listsegment_change", args=[made.pk])).content.decode()
    assert "顧客.csv" in page and "cp932" in page and "メールアドレス" in page
    report = staff_client.get(reverse("admin:segments_listsegment_match_report", args=[made.pk]))
    assert list(csv.reader(io.StringIO(report.content.decode("utf-8-sig")))) == [
        ["line", "value", "problem"], ["3", "ghost@example.jp", "No customer with this email address in the store."],
        ["4", "p0@example.jp", "duplicate of line 2"]]


def test_an_unreadable_csv_is_refused_on_the_form(shop, staff_client):
    store, _people, _seg = shop
    page = make(staff_client, store=store.pk, name="Upload", origin="csv",
                csv_file=SimpleUploadedFile("names.csv", "名前\n山田\n".encode(), content_type="text/csv"))
    assert page.status_code == 200 and "names.csv: No column of email addresses" in page.content.decode()
    assert not Segment.objects.filter(kind=SegmentKind.LIST).exists()


def test_live_preview_of_a_list(shop, staff_client):
    store, _people, seg = shop
    url = reverse("admin:segments_listsegment_preview")
    built = staff_client.post(url, {"store": store.pk, "origin": "expression", "any_of": [seg["vip"].pk],
                                    "all_of": [seg["line"].pk], "holdout_percent": "50"}).json()
    assert built == {"ok": True, "count": 1, "held_out": 1, "definition": "vip & line"}
    typed = staff_client.post(url, {"store": store.pk, "origin": "expression", "expression": "line -"}).json()
    assert typed["ok"] is False and typed["problems"][0]["column"] == 7
    query = staff_client.post(url, {"store": store.pk, "origin": "query", "query": "customer_tags CONTAINS 'line'"})
    assert query.json()["count"] == 3
    snapshot = staff_client.post(url, {"store": store.pk, "origin": "snapshot", "source": seg["unsub"].pk}).json()
    assert snapshot["count"] == 1


def test_actions_snapshot_combine_export(shop, staff_client):
    store, _people, seg = shop
    changelist = reverse("admin:segments_conditionsegment_changelist")
    staff_client.post(changelist, {"action": "snapshot_selected", "_selected_action": [seg["vip"].pk]})
    snapshot = ListSegment.objects.get()
    assert snapshot.slug.startswith("vip-") and snapshot.member_count == 2

    combine = staff_client.post(changelist, {"action": "combine_selected",
                                             "_selected_action": [seg["vip"].pk, seg["unsub"].pk]})
    assert combine.status_code == 302 and "expression=unsub+%7C+vip" in combine["Location"]
    form = staff_client.get(combine["Location"]).content.decode()
    assert 'value="unsub | vip"' in form

    export = staff_client.post(changelist, {"action": "export_selected",
                                            "_selected_action": [seg["vip"].pk, seg["line"].pk]})
    assert export.status_code == 302
    download = staff_client.post(export["Location"], {"columns": ["email"], "encoding": "utf-8-sig",
                                                      "holdout": "all"})
    assert download["Content-Disposition"].startswith('attachment; filename="2-segments-')
    rows = list(csv.reader(io.StringIO(b"".join(download.streaming_content).decode("utf-8-sig"))))
    assert rows[0] == ["segment", "email"]
    assert sorted(rows[1:]) == [["line", "p1@example.jp"], ["line", "p2@example.jp"], ["line", "p3@example.jp"],
                                ["vip", "p0@example.jp"], ["vip", "p1@example.jp"]]


def test_list_export_page_in_shift_jis_and_members_page_marks_holdout(shop, staff_client):
    store, _people, _seg = shop
    make(staff_client, store=store.pk, name="Held", slug="held", origin="expression", expression="line",
         holdout_percent="34", seed="1")
    made = ListSegment.objects.get(slug="held")
    url = reverse("admin:segments_listsegment_export") + f"?ids={made.pk}"
    assert "Shift_JIS" in staff_client.get(url).content.decode()
    download = staff_client.post(url, {"columns": ["email", "first_name", "holdout"], "encoding": "cp932",
                                       "holdout": "exclude"})
    assert download["Content-Type"] == "text/csv; charset=shift_jis"
    rows = list(csv.reader(io.StringIO(b"".join(download.streaming_content).decode("cp932"))))
    assert rows[0] == ["email", "first_name", "holdout"] and len(rows) == 3 and {r[2] for r in rows[1:]} == {"0"}
    assert rows[1][1] == "花子"
    members = staff_client.get(reverse("admin:segments_listsegment_members", args=[made.pk])).content.decode()
    assert members.count('class="holdout-mark"') == 1


def test_list_changelist_and_delete(shop, staff_client):
    store, _people, _seg = shop
    make(staff_client, store=store.pk, name="Gone soon", slug="gone", origin="expression", expression="vip")
    made = ListSegment.objects.get(slug="gone")
    page = staff_client.get(reverse("admin:segments_listsegment_changelist")).content.decode()
    assert "Gone soon" in page and "Set expression" in page
    staff_client.post(reverse("admin:segments_listsegment_changelist"),
                      {"action": "delete_selected", "_selected_action": [made.pk], "post": "yes"})
    assert not Segment.objects.filter(slug="gone").exists()
    assert not Membership.objects.filter(segment_id=made.pk).exists()
