"""Member export (django-import-export, streamed, Excel encodings) and `manage.py segments create-list`."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from ecpower.commerce.services import customer_facts_refresh
from segments.exports import MemberExport, match_report_csv
from segments.lists import list_create_from_csv, list_create_from_expression
from segments.models import Membership, Segment, SegmentKind
from segments.services import segment_create, segment_recompute
from tests.factories import CustomerFactory, OrderFactory, StoreFactory


@pytest.fixture
def shop(db):
    store = StoreFactory(shopify_domain="tea.myshopify.com", name="茶舗")
    hanako = CustomerFactory(store=store, email="hanako@example.jp", first_name="花子", last_name="山田",
                             shopify_id=7001, phone="+81 90-1234-5678", province_code="JP-13")
    emoji = CustomerFactory(store=store, email="emoji@example.jp", first_name="🍵", last_name="髙橋",
                            shopify_id=7002)
    plain = CustomerFactory(store=store, email="plain@example.jp", first_name="Ann", last_name="Lee",
                            shopify_id=7003)
    CustomerFactory(store=store, email="outsider@example.jp", shopify_id=7004)
    for person in (hanako, emoji, plain):
        person.tags.create(store=store, name="LINE連携")
    hanako.tags.create(store=store, name="VIP")
    OrderFactory(store=store, customer=hanako, total=Decimal("12345.60"),
                 created_at=dt.datetime(2025, 3, 1, 15, 30, tzinfo=dt.UTC))  # 2025-03-02 00:30 in Tokyo
    customer_facts_refresh(store=store)
    segment = segment_create(store=store, name="LINE", slug="line", query="customer_tags CONTAINS 'LINE連携'")
    segment_recompute(segment=segment)
    return store, segment, (hanako, emoji, plain)


def export(segment, **kwargs) -> tuple[bytes, MemberExport]:
    exporter = MemberExport(segment, **kwargs)
    return b"".join(exporter.chunks()), exporter


def rows_of(data: bytes, encoding: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(encoding), newline="")))


def test_export_all_columns_reads_back_as_the_members(shop):
    store, segment, (hanako, emoji, plain) = shop
    data, exporter = export(segment, columns=["shopify_id", "email", "first_name", "last_name", "phone", "tags",
                                              "province_code", "orders_count", "amount_spent", "first_order_at",
                                              "last_order_at", "holdout"])
    rows = rows_of(data, "utf-8")
    assert rows[0] == ["shopify_id", "email", "first_name", "last_name", "phone", "tags", "province_code",
                       "orders_count", "amount_spent", "first_order_at", "last_order_at", "holdout"]
    assert [r[1] for r in rows[1:]] == ["hanako@example.jp", "emoji@example.jp", "plain@example.jp"]
    assert rows[1] == ["7001", "hanako@example.jp", "花子", "山田", "+81 90-1234-5678", "LINE連携, VIP", "JP-13",
                       "1", "12345.60", "2025-03-02 00:30:00", "2025-03-02 00:30:00", "0"]
    assert exporter.rows == 3 and exporter.replaced_rows == 0
    assert not data.startswith(b"\xef\xbb\xbf") and data.endswith(b"\r\n")


def test_excel_encodings(shop):
    _store, segment, _people = shop
    with_bom, _ = export(segment, encoding="utf-8-sig")
    assert with_bom.startswith(b"\xef\xbb\xbf") and with_bom.count(b"\xef\xbb\xbf") == 1
    assert rows_of(with_bom, "utf-8-sig")[1][2] == "花子"

    sjis, exporter = export(segment, encoding="cp932", columns=["email", "first_name", "last_name"])
    rows = rows_of(sjis, "cp932")
    assert rows[1] == ["hanako@example.jp", "花子", "山田"]
    assert rows[2] == ["emoji@example.jp", "?", "髙橋"]  # 髙 is in CP932; the emoji is not
    assert exporter.replaced_rows == 1


def test_export_holdout_flag_and_filters(shop):
    store, _segment, _people = shop
    made = list_create_from_expression(store=store, name="Campaign", slug="campaign", expression="line",
                                       holdout_percent="34", seed=1)
    held_out = set(Membership.objects.filter(segment=made, holdout=True).values_list("customer__email", flat=True))
    assert len(held_out) == 1
    rows = rows_of(export(made, columns=["email", "holdout"])[0], "utf-8")
    assert {r[0] for r in rows[1:] if r[1] == "1"} == held_out
    only = rows_of(export(made, columns=["email"], holdout=True)[0], "utf-8")
    targets = rows_of(export(made, columns=["email"], holdout=False)[0], "utf-8")
    assert {r[0] for r in only[1:]} == held_out and len(targets) == 3


def test_export_in_chunks_keeps_every_member_once(shop, monkeypatch):
    store, segment, _people = shop
    monkeypatch.setattr("segments.exports.CHUNK", 2)
    exporter = MemberExport(segment, columns=["email"])
    chunks = list(exporter.chunks())
    assert len(chunks) == 3  # header, then two batches
    assert [r[0] for r in rows_of(b"".join(chunks), "utf-8")[1:]] == [
        "hanako@example.jp", "emoji@example.jp", "plain@example.jp"]


def test_an_exported_list_uploads_back_to_the_same_members(shop):
    store, segment, _people = shop
    for encoding in ("utf-8", "utf-8-sig", "cp932"):
        data, _ = export(segment, encoding=encoding)
        copy = list_create_from_csv(store=store, name=f"Copy {encoding}", slug=f"copy-{encoding}", data=data,
                                    file_name="export.csv")
        assert copy.upload.column == "shopify_id" and copy.upload.encoding == encoding
        assert set(Membership.objects.filter(segment=copy).values_list("customer_id", flat=True)) == set(
            Membership.objects.filter(segment=segment).values_list("customer_id", flat=True))


def test_unknown_columns_and_encodings_are_refused(shop):
    _store, segment, _people = shop
    with pytest.raises(ValueError, match="unknown column"):
        MemberExport(segment, columns=["email", "password"])
    with pytest.raises(ValueError, match="unknown encoding"):
        MemberExport(segment, encoding="latin-1")


# --- command line -----------------------------------------------------------------------------


def run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("segments", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_cli_create_list_every_way(shop, tmp_path):
    store, _segment, (hanako, _emoji, _plain) = shop
    d = ["--store", store.shopify_domain]
    out, _ = run("create-list", *d, "--slug", "buyers", "--name", "Buyers", "--query", "number_of_orders >= 1")
    assert "created list buyers: 1 members" in out
    out, _ = run("create-list", *d, "--slug", "line-then", "--name", "LINE then", "--from-segment", "line",
                 "--holdout-percent", "34", "--seed", "7")
    assert "created list line-then: 3 members, 1 held out (34.00 %, seed 7)" in out
    out, _ = run("create-list", *d, "--slug", "line-not-buyers", "--name", "LINE, no buyers",
                 "--expression", "line - buyers")
    assert "created list line-not-buyers: 2 members" in out

    upload = tmp_path / "targets.csv"
    upload.write_bytes("メールアドレス\r\nhanako@example.jp\r\nnobody@example.jp\r\n\r\nHANAKO@example.jp\r\n"
                       .encode("cp932"))
    report = tmp_path / "report.csv"
    out, _ = run("create-list", *d, "--slug", "uploaded", "--name", "Uploaded", "--csv", str(upload),
                 "--report", str(report))
    assert "targets.csv: 3 rows (cp932, column 'メールアドレス', header), 1 matched, 1 unmatched, 1 duplicates, " \
           "1 blank" in out
    assert "unmatched line 3: nobody@example.jp: No customer with this email address" in out
    assert "duplicate line 5: HANAKO@example.jp (same customer as line 2)" in out
    assert "created list uploaded: 1 members" in out
    assert rows_of(report.read_bytes(), "utf-8-sig") == [
        ["line", "value", "problem"],
        ["3", "nobody@example.jp", "No customer with this email address in the store."],
        ["5", "HANAKO@example.jp", "duplicate of line 2"],
    ]
    kinds = dict(Segment.objects.filter(store=store, kind=SegmentKind.LIST).values_list("slug", "list_origin"))
    assert kinds == {"buyers": "query", "line-then": "snapshot", "line-not-buyers": "expression", "uploaded": "csv"}


def test_cli_create_list_errors_exit_non_zero_and_make_nothing(shop, tmp_path):
    store, *_ = shop
    d = ["--store", store.shopify_domain, "--slug", "x", "--name", "X"]
    err = io.StringIO()
    with pytest.raises(CommandError, match="not valid"):
        call_command("segments", "create-list", *d, "--expression", "line |", stdout=io.StringIO(), stderr=err)
    assert "line 1, column 7" in err.getvalue()
    bad = tmp_path / "bad.csv"
    bad.write_text("name\n山田\n")
    with pytest.raises(CommandError, match="bad.csv: No column of email addresses"):
        run("create-list", *d, "--csv", str(bad))
    with pytest.raises(CommandError, match="cannot read"):
        run("create-list", *d, "--csv", str(tmp_path / "missing.csv"))
    with pytest.raises(CommandError, match="--as-of applies to --query only"):
        run("create-list", *d, "--expression", "line", "--as-of", "2025-01-01")
    assert not Segment.objects.filter(kind=SegmentKind.LIST).exists()


def test_cli_members_csv_with_columns_encoding_and_output(shop, tmp_path):
    store, *_ = shop
    target = tmp_path / "line.csv"
    out, err = run("members", "--store", store.shopify_domain, "--slug", "line", "--format", "csv",
                   "--columns", "email,first_name", "--encoding", "cp932", "--output", str(target))
    assert "3 members written to" in out
    assert "1 row(s) had characters cp932 cannot hold" in err
    assert rows_of(target.read_bytes(), "cp932")[:2] == [["email", "first_name"], ["hanako@example.jp", "花子"]]
    with pytest.raises(CommandError, match="unknown column"):
        run("members", "--store", store.shopify_domain, "--slug", "line", "--columns", "email,secret")


def test_match_report_csv_sorts_unmatched_and_duplicates_by_line(shop):
    store, *_ = shop
    made = list_create_from_csv(store=store, name="U", data=b"email\nx@y.jp\nhanako@example.jp\nx@y.jp\n",
                                file_name="u.csv")
    assert match_report_csv(made.upload).splitlines() == [
        "line,value,problem", "2,x@y.jp,No customer with this email address in the store.",
        "4,x@y.jp,duplicate of line 2"]
