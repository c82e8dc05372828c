"""Importing Shopify's admin CSV exports, as merchants download them (and as Excel re-saves them)."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from ecpower.commerce.csv_import import CsvFile, shopify_csv_import
from ecpower.commerce.models import Customer, CustomerTag, LineItem, Order, Product, ProductVariant, Store
from ecpower.commerce.shopify_csv import CsvFileError
from tests.factories import LineItemFactory, OrderFactory


def _file(directory, name, encoding="utf-8"):
    text = (directory / name).read_text(encoding="utf-8")
    return CsvFile(name=name, data=text.encode(encoding))


def _import_all(store, directory, encoding="utf-8"):
    return shopify_csv_import(
        store=store,
        customers=_file(directory, "customers_export.csv", encoding),
        products=_file(directory, "products_export.csv", encoding),
        orders=_file(directory, "orders_export.csv", encoding),
    )


def _snapshot(store):
    """Everything an import writes, as plain values, for before/after comparisons."""
    return {
        "customers": sorted(Customer.objects.filter(store=store).values_list("email", "shopify_id", "first_name", *Customer.FACT_FIELDS)),
        "tags": sorted(CustomerTag.objects.filter(store=store).values_list("customer__email", "name")),
        "orders": sorted(Order.objects.filter(store=store).values_list("name", "customer__email", "total", "refunded_amount", "ordinal", "cancelled_at")),
        "lines": sorted(LineItem.objects.filter(store=store).values_list("order__name", "position", "title", "sku", "quantity", "product__handle")),
        "variants": sorted(ProductVariant.objects.filter(store=store).values_list("product__handle", "sku", "title", "price")),
    }


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp932"])
def test_import_reads_every_export_in_utf8_bom_and_shift_jis(store, shopify_csv_dir, encoding):
    _import_all(store, shopify_csv_dir, encoding)

    hanako = Customer.objects.get(store=store, shopify_id=9013808660771)
    assert (hanako.last_name, hanako.first_name, hanako.city, hanako.province_code) == ("山田", "花子", "渋谷区", "JP-13")
    assert hanako.phone == "+819012345678"  # the spreadsheet-guarding apostrophe is gone
    assert hanako.email_marketing == "SUBSCRIBED"
    assert sorted(hanako.tags.values_list("name", flat=True)) == ["LINE連携", "VIP"]
    taro = Customer.objects.get(store=store, shopify_id=9013808660772)
    assert (taro.email_marketing, taro.sms_marketing, taro.note) == ("NOT_SUBSCRIBED", "SUBSCRIBED", "電話連絡は不要")


def test_orders_link_to_customers_by_email_regardless_of_case(store, shopify_csv_dir):
    _import_all(store, shopify_csv_dir)
    hanako = Customer.objects.get(store=store, email="hanako@example.jp")
    assert sorted(hanako.orders.values_list("name", flat=True)) == ["#1001", "#1003", "#1004", "#1005"]


def test_guest_orders_are_kept_without_a_customer(store, shopify_csv_dir):
    _import_all(store, shopify_csv_dir)
    guest = Order.objects.get(store=store, name="#1002")
    assert guest.customer is None
    assert guest.ordinal is None
    assert guest.source_name == "pos"
    assert guest.line_items.get().sku == "TEA-SEN-50"


def test_an_orders_file_alone_creates_customers_from_emails(store, shopify_csv_dir):
    shopify_csv_import(store=store, orders=_file(shopify_csv_dir, "orders_export.csv"))
    assert sorted(Customer.objects.filter(store=store).values_list("email", flat=True)) == [
        "hanako@example.jp",
        "new.buyer@example.jp",
    ]
    buyer = Customer.objects.get(store=store, email="new.buyer@example.jp")
    assert (buyer.first_name, buyer.last_name, buyer.city, buyer.province_code) == ("美咲", "高橋", "横浜市", "JP-14")
    assert buyer.first_order_discount_code == "LINE500"
    assert buyer.first_order_source == "580111"


def test_multi_variant_products_keep_each_variant_and_skip_image_rows(store, shopify_csv_dir):
    shopify_csv_import(store=store, products=_file(shopify_csv_dir, "products_export.csv"))
    sencha = Product.objects.get(store=store, handle="sencha-yabukita")
    assert (sencha.title, sencha.product_type, sencha.vendor) == ("煎茶 やぶきた", "緑茶", "静岡茶園")
    assert list(sencha.variants.values_list("sku", "title", "price")) == [
        ("TEA-SEN-50", "50g", Decimal("1080.00")),
        ("TEA-SEN-100", "100g", Decimal("1944.00")),
    ]
    assert sorted(sencha.tags.values_list("name", flat=True)) == ["bestseller", "green-tea", "tea"]
    assert list(Product.objects.get(handle="yunomi-aizome").variants.values_list("title", flat=True)) == [""]


def test_line_items_match_products_by_sku_then_by_title(store, shopify_csv_dir):
    _import_all(store, shopify_csv_dir)
    by_sku = LineItem.objects.get(order__name="#1001", position=1)
    by_title = LineItem.objects.get(order__name="#1001", position=2)  # no SKU in the export
    assert by_sku.product.handle == "sencha-yabukita"
    assert by_title.product.handle == "yunomi-aizome"
    assert by_title.product_type == "器"


def test_products_imported_after_orders_still_get_linked(store, shopify_csv_dir):
    shopify_csv_import(store=store, orders=_file(shopify_csv_dir, "orders_export.csv"))
    assert not LineItem.objects.filter(store=store, product__isnull=False).exists()
    summary = shopify_csv_import(store=store, products=_file(shopify_csv_dir, "products_export.csv"))
    assert summary.line_items_linked == LineItem.objects.filter(store=store).count()


def _products_by_order(store):
    """Each order's products as the order keeps them, and as its lines say."""
    kept = dict(Order.objects.filter(store=store).values_list("name", "product_ids"))
    lines: dict[str, set[int]] = {name: set() for name in kept}
    for name, product_id in LineItem.objects.filter(store=store, product__isnull=False).values_list(
            "order__name", "product_id"):
        lines[name].add(product_id)
    return kept, {name: sorted(ids) for name, ids in lines.items()}


def test_every_ingest_keeps_each_orders_products_as_its_lines_have_them(store, shopify_csv_dir):
    shopify_csv_import(store=store, orders=_file(shopify_csv_dir, "orders_export.csv"))
    kept, lines = _products_by_order(store)
    assert kept == lines and set(map(tuple, kept.values())) == {()}  # known: none of them has a product yet
    shopify_csv_import(store=store, products=_file(shopify_csv_dir, "products_export.csv"))  # links them
    kept, lines = _products_by_order(store)
    assert kept == lines and len(kept["#1001"]) == 2
    # A re-export where #1001's second line is now the first product: the order's products follow.
    orders = (shopify_csv_dir / "orders_export.csv").read_text(encoding="utf-8").replace(
        ",1,藍染 湯呑み,2420.00,,,", ",1,煎茶 やぶきた - 100g,2420.00,,TEA-SEN-100,", 1)
    shopify_csv_import(store=store, orders=CsvFile("orders_export.csv", orders.encode()))
    kept, lines = _products_by_order(store)
    assert kept == lines and len(kept["#1001"]) == 1


def test_an_ingest_of_orders_links_its_lines_as_it_writes_them_and_leaves_older_unlinked_lines_unread(
        store, shopify_csv_dir):
    shopify_csv_import(store=store, products=_file(shopify_csv_dir, "products_export.csv"))
    custom = LineItemFactory(store=store, order=OrderFactory(store=store), title="配送保険", sku="")  # never matches
    with CaptureQueriesContext(connection) as queries:
        summary = shopify_csv_import(store=store, orders=_file(shopify_csv_dir, "orders_export.csv"))
    written = LineItem.objects.filter(store=store).exclude(pk=custom.pk)
    assert summary.line_items_linked == written.filter(product__isnull=False).count() == written.count()
    assert LineItem.objects.get(order__name="#1001", position=2).product_type == "器"  # linked by title
    # Without new products no older line could find one, so they are not read (the custom item, here).
    assert not [q["sql"] for q in queries.captured_queries if '"product_id" IS NULL' in q["sql"]]


def test_cancelled_and_refunded_orders_follow_the_facts_rule(store, shopify_csv_dir):
    _import_all(store, shopify_csv_dir)
    hanako = Customer.objects.get(store=store, email="hanako@example.jp")
    orders = dict(hanako.orders.values_list("name", "ordinal"))
    # #1004 is cancelled: no ordinal, not counted. #1003 is fully refunded but still an order.
    assert orders == {"#1001": 1, "#1003": 2, "#1004": None, "#1005": 3}
    assert hanako.orders_count == 3
    # 6308 + (1740 - 1740) + (2604 - 500)
    assert hanako.amount_spent == Decimal("8412.00")
    assert hanako.average_order_value == Decimal("2804.00")
    assert hanako.first_order_discount_code == "WELCOME10"
    assert hanako.first_order_utm_campaign == "insta_spring"
    assert hanako.first_order_at == dt.datetime(2025, 5, 11, 0, 55, 16, tzinfo=dt.UTC)
    assert hanako.last_order_at == dt.datetime(2025, 8, 14, 23, 30, tzinfo=dt.UTC)
    assert Order.objects.get(name="#1005").tags == "gift, 母の日"


def test_reimporting_the_same_files_changes_nothing(store, shopify_csv_dir):
    _import_all(store, shopify_csv_dir)
    before = _snapshot(store)
    summary = _import_all(store, shopify_csv_dir, "cp932")
    assert _snapshot(store) == before
    assert (summary.customers.created, summary.customers.updated, summary.customers.unchanged) == (0, 0, 3)
    assert (summary.products.created, summary.products.updated, summary.products.unchanged) == (0, 0, 2)
    assert (summary.orders.created, summary.orders.updated, summary.orders.unchanged) == (0, 0, 6)


def test_reimport_applies_changes_to_tags_and_orders(store, shopify_csv_dir):
    _import_all(store, shopify_csv_dir)
    customers = (shopify_csv_dir / "customers_export.csv").read_text().replace("LINE連携, VIP", "VIP, 定期購入")
    orders = (shopify_csv_dir / "orders_export.csv").read_text().replace(",0.00,,,,,,,,,,5601234567005", ",2604.00,,,,,,,,,,5601234567005")
    summary = shopify_csv_import(
        store=store,
        customers=CsvFile("customers_export.csv", customers.encode()),
        orders=CsvFile("orders_export.csv", orders.replace("partially_refunded", "refunded").replace(",500.00,", ",2604.00,").encode()),
    )
    hanako = Customer.objects.get(store=store, email="hanako@example.jp")
    assert sorted(hanako.tags.values_list("name", flat=True)) == ["VIP", "定期購入"]
    assert summary.customers.updated == 1
    assert summary.orders.updated == 1
    assert hanako.amount_spent == Decimal("6308.00")


def _broken(directory, name, old, new):
    text = (directory / name).read_text(encoding="utf-8")
    assert old in text
    return CsvFile(name=name, data=text.replace(old, new, 1).encode())


@pytest.mark.parametrize(
    ("name", "old", "new", "message"),
    [
        # Line numbers are the file's physical lines: #1001's Note Attributes cell spans three of them.
        ("orders_export.csv", "2025-06-20 20:15:42 +0900", "20/06/2025 8pm", "orders_export.csv, line 7, column 'Paid at'"),
        ("orders_export.csv", ",1,煎茶 やぶきた - 50g,1080.00", ",one,煎茶 やぶきた - 50g,1080.00", "column 'Lineitem quantity': one is not a whole number"),
        ("customers_export.csv", "'9013808660773", "9.01381E+12", "line 4, column 'Customer ID': 9.01381E+12 is an id that Excel turned"),
        ("customers_export.csv", "ken@example.jp", "hanako@example.jp", "line 4, column 'Email': This customer also appears on line 2"),
        ("products_export.csv", "1944.00", "\"1.944,00\"", "line 3, column 'Variant Price': 1.944,00 is not a number"),
        ("products_export.csv", "TEA-SEN-100,,,,,,1944.00", "TEA-SEN-100,,,,,,1944.00,extra", "line 3: The row has 37 fields but the header has 36"),
    ],
)
def test_a_broken_row_rejects_the_import_with_its_location_and_stores_nothing(store, shopify_csv_dir, name, old, new, message):
    files = {
        "customers": _file(shopify_csv_dir, "customers_export.csv"),
        "products": _file(shopify_csv_dir, "products_export.csv"),
        "orders": _file(shopify_csv_dir, "orders_export.csv"),
    }
    files[name.split("_")[0]] = _broken(shopify_csv_dir, name, old, new)
    with pytest.raises(CsvFileError) as error:
        shopify_csv_import(store=store, **files)
    assert message in str(error.value)
    assert not Customer.objects.exists()
    assert not Order.objects.exists()
    assert not Product.objects.exists()


def test_a_failure_while_writing_leaves_earlier_data_untouched(store, shopify_csv_dir, monkeypatch):
    _import_all(store, shopify_csv_dir)
    before = _snapshot(store)

    def explode(**kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("ecpower.commerce.csv_import.customer_facts_refresh", explode)
    changed = (shopify_csv_dir / "customers_export.csv").read_text().replace("花子", "華子")
    with pytest.raises(RuntimeError):
        shopify_csv_import(store=store, customers=CsvFile("customers_export.csv", changed.encode()))
    assert _snapshot(store) == before


def test_wrong_kind_of_file_is_named(store, shopify_csv_dir):
    with pytest.raises(CsvFileError, match="line 1: This is not Shopify's customers export: missing column"):
        shopify_csv_import(store=store, customers=_file(shopify_csv_dir, "orders_export.csv"))


def test_a_file_in_an_unknown_encoding_is_refused_with_the_line(store):
    data = b"Name,Email,Created at,Lineitem quantity,Lineitem name,Lineitem price\n#1,a@example.jp,,,,\n" + b"\x81 broken\n"  # 0x81 starts a CP932 pair and cannot be followed by a space
    with pytest.raises(CsvFileError, match="line 3: The file is neither UTF-8 nor Shift_JIS"):
        shopify_csv_import(store=store, orders=CsvFile("orders_export.csv", data))


def test_an_empty_file_is_refused(store):
    with pytest.raises(CsvFileError, match="orders_export.csv: The file is empty"):
        shopify_csv_import(store=store, orders=CsvFile("orders_export.csv", b"\n"))


def test_older_exports_with_accepts_marketing_are_read(store):
    data = b"Customer ID,First Name,Last Name,Email,Accepts Marketing,Tags\n'42,A,B,a@example.jp,yes,\n"
    shopify_csv_import(store=store, customers=CsvFile("customers_export.csv", data))
    assert Customer.objects.get(shopify_id=42).email_marketing == "SUBSCRIBED"


def test_command_imports_and_prints_the_summary(db, shopify_csv_dir, capsys):
    call_command(
        "import_shopify_csv",
        "--store", "cli.myshopify.com", "--create", "--no-progress",
        "--customers", str(shopify_csv_dir / "customers_export.csv"),
        "--orders", str(shopify_csv_dir / "orders_export.csv"),
    )
    out = capsys.readouterr().out
    assert "customers  created        3" in out
    assert "orders     created        6" in out
    assert Store.objects.get(shopify_domain="cli.myshopify.com").orders.count() == 6


def test_command_reports_located_errors_and_imports_nothing(db, tmp_path):
    bad = tmp_path / "orders_export.csv"
    bad.write_text("Name,Email,Created at,Lineitem quantity,Lineitem name,Lineitem price\n#1,a@example.jp,yesterday,1,Tea,100\n")
    with pytest.raises(CommandError, match="Nothing was imported. orders_export.csv, line 2, column 'Created at'"):
        call_command("import_shopify_csv", "--store", "cli.myshopify.com", "--create", "--orders", str(bad))
    assert not Order.objects.exists()


def test_command_refuses_an_unknown_store_without_create(db, shopify_csv_dir):
    with pytest.raises(CommandError, match="No store nowhere.myshopify.com; pass --create"):
        call_command("import_shopify_csv", "--store", "nowhere.myshopify.com", "--orders", str(shopify_csv_dir / "orders_export.csv"))


@pytest.mark.parametrize(("raw", "expected"), [("1944.00", "1944.00"), ("1,944", "1944.00"), ("¥2,420", "2420.00"), ("'15", "15.00")])
def test_amounts_accept_what_shopify_and_excel_write(raw, expected):
    from ecpower.commerce.shopify_csv import parse_decimal

    assert parse_decimal(raw) == Decimal(expected)


@pytest.mark.parametrize("raw", ["1.944,00", "12,34", "NaN", "abc"])
def test_amounts_that_could_be_misread_are_refused(raw):
    from ecpower.commerce.shopify_csv import parse_decimal

    with pytest.raises(ValueError, match="is not a number"):
        parse_decimal(raw)


def test_an_order_that_becomes_a_guest_order_stops_counting_for_its_old_customer(store, shopify_csv_dir):
    """Line items carry their order's customer for products_purchased; a re-import without one clears it."""
    import dataclasses

    from ecpower.commerce.csv_import import records_import
    from ecpower.commerce.shopify_csv import parse_orders
    from segments.query_language import parse
    from segments.selectors import rule_members

    _import_all(store, shopify_csv_dir)
    hanako = Customer.objects.get(store=store, email="hanako@example.jp")
    bought_sencha = parse("products_purchased MATCHES (sku = 'TEA-SEN-100', count >= 2)")  # #1001 and #1005
    assert hanako in rule_members(store=store, tree=bought_sencha)
    assert set(LineItem.objects.filter(order__name="#1001").values_list("customer_id", "ordinal")) == {(hanako.pk, 1)}

    records = parse_orders(_file(shopify_csv_dir, "orders_export.csv").data, file_name="orders_export.csv",
                           zone=store.zone)
    first = next(r for r in records if r.name == "#1001")
    records_import(store=store, orders=[dataclasses.replace(first, email="", customer_fields={})])

    assert Order.objects.get(store=store, name="#1001").customer is None
    assert set(LineItem.objects.filter(order__name="#1001").values_list("customer_id", "ordinal")) == {(None, None)}
    assert hanako not in rule_members(store=store, tree=bought_sencha)


@pytest.mark.parametrize("change", ["customer", "time"])
def test_lines_follow_a_reimported_order_to_its_new_customer_or_time(store, shopify_csv_dir, change):
    """products_purchased reads the lines' copies of their order's customer, time and ordinal.

    Moving an order by a minute or to a customer without orders keeps its ordinal (1), so the copies
    follow only because the import clears them (a scoped facts refresh copies fields only to lines
    without copies and to orders whose ordinal changed).
    """
    import dataclasses

    from ecpower.commerce.csv_import import records_import
    from ecpower.commerce.shopify_csv import parse_orders

    _import_all(store, shopify_csv_dir)
    records = parse_orders(_file(shopify_csv_dir, "orders_export.csv").data, file_name="orders_export.csv",
                           zone=store.zone)
    first = next(r for r in records if r.name == "#1001")
    if change == "customer":
        moved = dataclasses.replace(first, email="newcomer@example.jp", customer_fields={})
    else:
        moved = dataclasses.replace(
            first, fields={**first.fields, "created_at": first.fields["created_at"] + dt.timedelta(minutes=1)})
    records_import(store=store, orders=[moved])

    order = Order.objects.get(store=store, name="#1001")
    assert order.ordinal == 1
    assert order.customer.email == ("newcomer@example.jp" if change == "customer" else "hanako@example.jp")
    assert set(LineItem.objects.filter(order=order).values_list("customer_id", "ordered_at", "ordinal")) == {
        (order.customer_id, order.created_at, 1)}


def _facts_state(store):
    return (sorted(Order.objects.filter(store=store).values_list("name", "ordinal")),
            sorted(LineItem.objects.filter(store=store).values_list(
                "order__name", "position", "customer_id", "ordered_at", "ordinal")))


@pytest.mark.parametrize("days", [30, -200], ids=["after her last order", "before her first"])
def test_new_orders_are_numbered_and_their_lines_copied_as_a_whole_store_refresh_would(store, shopify_csv_dir, days):
    """The ingest writes new lines with their order's customer, time and a provisional ordinal, and the
    import's own facts refresh corrects what the hint got wrong (an order older than the customer's others)."""
    import dataclasses

    from ecpower.commerce.csv_import import records_import
    from ecpower.commerce.services import customer_facts_refresh
    from ecpower.commerce.shopify_csv import parse_orders

    _import_all(store, shopify_csv_dir)
    records = parse_orders(_file(shopify_csv_dir, "orders_export.csv").data, file_name="orders_export.csv",
                           zone=store.zone)
    last = next(r for r in records if r.name == "#1005")  # hanako's third counted order
    records_import(store=store, orders=[
        dataclasses.replace(last, name=f"#200{k}", shopify_id=None,
                            fields={**last.fields, "created_at": last.fields["created_at"] + dt.timedelta(days=days + k)})
        for k in (0, 1)])

    imported = _facts_state(store)
    customer_facts_refresh(store=store)
    assert _facts_state(store) == imported
    hanako = dict(Order.objects.filter(store=store, customer__email="hanako@example.jp").values_list("name", "ordinal"))
    assert hanako == ({"#1001": 1, "#1003": 2, "#1004": None, "#1005": 3, "#2000": 4, "#2001": 5} if days > 0 else
                      {"#2000": 1, "#2001": 2, "#1001": 3, "#1003": 4, "#1004": None, "#1005": 5})
