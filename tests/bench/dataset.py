"""A generated store for the benchmarks: vectorised, deterministic, written as CSV and Parquet.

``generate`` draws the store with NumPy (one seed, so the same arguments give the same rows) and
lets DuckDB write two copies: CSV files in the column order of our tables, which ``load`` streams
into PostgreSQL with COPY, and Parquet files of the same rows, which the DuckDB baseline reads.

Shape (the Performance issue): about 5 orders per buyer on average, 60 % of buyers order once,
2–4 line items per order over the demo store's catalogue; 5 % of customers never order; about 2 %
of orders are cancelled and 0.2 % are test orders (neither counts); some first orders carry a
discount code or a UTM campaign; customer tags such as ``LINE連携`` and ``subscription``.
Customer facts and order ordinals are left empty: building them is a step of the benchmark.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from ecpower.commerce.demo import CATALOGUE, GIVEN_NAMES, PREFECTURES, SURNAMES
from ecpower.commerce.services import next_ordinals

YEARS = 2.5
CODES = ["WELCOME10", "LINE500", "SPRING2025", "MOTHERSDAY", "SAMPLE300"]
CAMPAIGNS = [("instagram", "paid_social", "insta_spring"), ("line", "social", "line_friend"),
             ("google", "cpc", "google_shopping"), ("newsletter", "email", "welcome_mail")]
SOURCES = ["web", "pos", "shopify_draft_order"]
MARKETING = ["SUBSCRIBED", "NOT_SUBSCRIBED", "UNSUBSCRIBED"]

CUSTOMER_COLUMNS = [
    "id", "store_id", "shopify_id", "email", "phone", "first_name", "last_name", "email_marketing", "sms_marketing",
    "country_code", "province_code", "city", "zip", "state", "note", "shopify_created_at", "shopify_updated_at",
    "created_at", "orders_count", "amount_spent", "average_order_value", "first_order_at", "last_order_at",
    "first_order_discount_code", "first_order_source", "first_order_utm_source", "first_order_utm_medium",
    "first_order_utm_campaign",
]
ORDER_COLUMNS = [
    "id", "store_id", "shopify_id", "name", "customer_id", "email", "created_at", "processed_at",
    "shopify_updated_at", "currency", "subtotal", "total_discounts", "discount_code", "shipping", "tax", "total",
    "refunded_amount", "source_name", "landing_site", "referring_site", "utm_source", "utm_medium", "utm_campaign",
    "utm_content", "utm_term", "tags", "financial_status", "fulfillment_status", "cancelled_at", "test", "ordinal",
    "product_ids",
]
LINE_COLUMNS = ["id", "store_id", "order_id", "product_id", "sku", "title", "vendor", "product_type", "quantity",
                "unit_price", "discount", "position"]
# New orders' lines also carry their order's customer, time and provisional ordinal, as the ingest writes them
# (ecpower.commerce.services.orders_number_provisionally); a whole store's lines get them from the facts build.
LINE_COPY_COLUMNS = ["customer_id", "ordered_at", "ordinal"]
TAG_COLUMNS = ["id", "store_id", "customer_id", "name"]
TAG_EVENT_COLUMNS = ["id", "store_id", "customer_id", "name", "action", "occurred_at", "source"]
CUSTOMER_TAGS = ["LINE連携", "subscription", "wholesale"]


@dataclass
class Dataset:
    directory: Path
    store_id: int
    customers: int
    orders: int
    line_items: int
    customer_tags: int
    # (table, CSV file, columns) in load order: parents before children.
    files: list[tuple[str, Path, list[str]]]


def _stamp(seconds: str) -> str:
    """SQL turning epoch seconds into a UTC timestamp (written to CSV with an explicit +00)."""
    return f"make_timestamp(({seconds}) * 1000000)"


def _pick(rng: np.random.Generator, size: int, weights) -> np.ndarray:
    weights = np.asarray(weights, dtype=float)
    return rng.choice(len(weights), size=size, p=weights / weights.sum())


def generate(*, directory: Path, store_id: int, customers: int, seed: int, until: dt.date, time_zone: str,
             products: list[int] | dict[int, list[int]], first_ids: dict[str, int], new_orders_for: np.ndarray | None = None,
             order_name_start: int = 1001, at: dt.datetime | None = None,
             store_of: np.ndarray | None = None, known: dict[int, tuple[int, dt.datetime | None]] | None = None,
             ) -> Dataset:
    """Write the store's rows under ``directory`` (CSV and Parquet); ``products`` are the ids of the
    demo catalogue's products in CATALOGUE order, ``first_ids`` the first free id of each table.

    With ``new_orders_for`` (customer ids), only new orders of those customers are drawn, placed at
    ``at``: the incremental-update step of the benchmark. As the ingest does, a counted new order gets
    its customer's next ordinal from ``known`` (customer id → orders count and last order time) unless
    the customer has a later order, and its lines get their copies. With ``store_of`` (a store id per customer),
    one call fills many stores (the multi-store run); each customer's rows carry its store.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    zone = zoneinfo.ZoneInfo(time_zone)
    end = int(dt.datetime.combine(until, dt.time(23, 59, 59), tzinfo=zone).timestamp())
    start = end - int(YEARS * 365 * 86400)

    if new_orders_for is None:
        customer_ids = first_ids["customer"] + np.arange(customers, dtype=np.int64)
        customer_store = np.full(customers, store_id, dtype=np.int64) if store_of is None else store_of
        added = rng.integers(start, end - 86400, size=customers)
        buyer = rng.random(customers) >= 0.05
        once = buyer & (rng.random(customers) < 0.6)
        repeaters = buyer & ~once
        orders_per = once.astype(np.int64)
        orders_per[repeaters] = 1 + np.minimum(rng.geometric(1 / 10, size=int(repeaters.sum())), 60)
        owner = np.repeat(np.arange(customers), orders_per)
        order_customer, order_store = customer_ids[owner], customer_store[owner]
        first_gap = rng.exponential(7 * 86400, size=len(owner)).astype(np.int64)
        order_at = added[owner] + first_gap
        later = np.ones(len(owner), dtype=bool)
        later[np.r_[0, np.cumsum(orders_per)[:-1]][orders_per > 0]] = False  # each customer's first order
        spread = (rng.random(len(owner)) * (end - order_at)).astype(np.int64)
        order_at = np.minimum(np.where(later, order_at + spread, order_at), end)
    else:
        customer_ids = np.asarray(new_orders_for, dtype=np.int64)
        order_customer = customer_ids
        order_store = np.full(len(customer_ids), store_id, dtype=np.int64)
        moment = int((at or dt.datetime.combine(until, dt.time(12), tzinfo=zone)).timestamp())
        order_at = moment + np.arange(len(order_customer), dtype=np.int64) % 3600
        later = np.ones(len(order_customer), dtype=bool)

    time_order = np.argsort(order_at, kind="stable")
    order_at, order_customer, later = order_at[time_order], order_customer[time_order], later[time_order]
    order_store = order_store[time_order]
    n_orders = len(order_at)
    order_ids = first_ids["order"] + np.arange(n_orders, dtype=np.int64)

    # Line items: 2–4 per order over the catalogue's variants, weighted by popularity.
    variants = [(p, sku, title, price, weight / len(vs))
                for p, (_h, _t, _type, _v, _tags, vs, weight) in enumerate(CATALOGUE) for sku, title, price in vs]
    lines_per = rng.integers(2, 5, size=n_orders)
    line_order = np.repeat(np.arange(n_orders), lines_per)
    n_lines = len(line_order)
    variant = _pick(rng, n_lines, [v[4] for v in variants])
    quantity = _pick(rng, n_lines, [8, 2, 0.5]) + 1
    price = np.array([v[3] for v in variants], dtype=np.int64)[variant]
    position = np.arange(n_lines) - np.repeat(np.r_[0, np.cumsum(lines_per)[:-1]], lines_per) + 1
    subtotal = np.bincount(line_order, weights=price * quantity, minlength=n_orders).astype(np.int64)

    code = np.where(rng.random(n_orders) < np.where(later, 0.05, 0.35), _pick(rng, n_orders, [10, 5, 3, 2, 2]), -1)
    campaign = np.where(~later & (rng.random(n_orders) < 0.45), _pick(rng, n_orders, [6, 6, 5, 3]), -1)
    discount = np.where(code >= 0, np.round(subtotal * 0.1), 0).astype(np.int64)
    shipping = np.where(subtotal - discount >= 5000, 0, 660)
    total = subtotal - discount + shipping
    roll = rng.random(n_orders)
    cancelled = roll < 0.02
    test = (roll >= 0.02) & (roll < 0.022)
    next_ordinal = np.zeros(n_orders, dtype=np.int64)  # 0: none (the facts build or refresh ranks the order)
    if new_orders_for is not None and known:  # as the ingest numbers new orders (orders_number_provisionally)
        last_seen = {pk: (count, last.timestamp() if last else None) for pk, (count, last) in known.items()}
        rows = list(zip(order_customer.tolist(), order_at.tolist(), (~(cancelled | test)).tolist(), strict=True))
        next_ordinal[:] = [ordinal or 0 for ordinal in next_ordinals(rows, last_seen)]
    refunded = np.where((roll >= 0.022) & (roll < 0.05), np.round(total * 0.3), 0).astype(np.int64)

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.register("o", {
        "id": order_ids, "store_id": order_store, "customer_id": order_customer, "at": order_at, "subtotal": subtotal, "discount": discount,
        "code": code, "campaign": campaign, "shipping": shipping, "total": total, "refunded": refunded,
        "cancelled": cancelled, "test": test, "source": _pick(rng, n_orders, [90, 7, 3]),
        "n": order_name_start + np.arange(n_orders, dtype=np.int64), "next": next_ordinal,
    })
    con.register("li", {
        "id": first_ids["line_item"] + np.arange(n_lines, dtype=np.int64), "order_id": order_ids[line_order],
        "store_id": order_store[line_order],
        "variant": variant, "quantity": quantity, "price": price, "position": position,
    })
    con.execute("CREATE TABLE variant (store_id BIGINT, v INTEGER, product_id BIGINT, sku VARCHAR, title VARCHAR, "
                "vendor VARCHAR, product_type VARCHAR)")
    by_store = products if isinstance(products, dict) else {store_id: products}
    con.executemany("INSERT INTO variant VALUES (?, ?, ?, ?, ?, ?, ?)", [
        (store, i, ids[p], sku, CATALOGUE[p][1] if title == "Default Title" else f"{CATALOGUE[p][1]} - {title}",
         CATALOGUE[p][3], CATALOGUE[p][2])
        for store, ids in by_store.items() for i, (p, sku, title, _price, _w) in enumerate(variants)])
    con.execute("CREATE TABLE lookup (kind VARCHAR, i INTEGER, a VARCHAR, b VARCHAR, c VARCHAR)")
    rows = [("code", i, c, "", "") for i, c in enumerate(CODES)]
    rows += [("campaign", i, *c) for i, c in enumerate(CAMPAIGNS)]
    rows += [("source", i, s, "", "") for i, s in enumerate(SOURCES)]
    con.executemany("INSERT INTO lookup VALUES (?, ?, ?, ?, ?)", rows)

    files = []

    def write(name: str, table: str, columns: list[str], select: str) -> None:
        path = directory / f"{name}.csv"
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM ({select}) AS t({', '.join(columns)})")
        con.execute(f"COPY {name} TO '{path}' (HEADER false, TIMESTAMPFORMAT '%Y-%m-%d %H:%M:%S+00')")
        files.append((table, path, columns))

    n_tags = 0
    if new_orders_for is None:
        prefecture = _pick(rng, customers, [w for _c, _city, w in PREFECTURES])
        tag_draws = rng.random((customers, len(CUSTOMER_TAGS)))
        has_tag = np.stack([tag_draws[:, 0] < 0.3, (orders_per >= 4) & (tag_draws[:, 1] < 0.3),
                            tag_draws[:, 2] < 0.02], axis=1)
        tag_customer, tag_kind = np.nonzero(has_tag)
        n_tags = len(tag_customer)
        con.register("c", {
            "id": customer_ids, "store_id": customer_store, "added": added, "surname": rng.integers(0, len(SURNAMES), size=customers),
            "given": rng.integers(0, len(GIVEN_NAMES), size=customers), "prefecture": prefecture,
            "email_state": _pick(rng, customers, [55, 34, 11]), "sms_state": _pick(rng, customers, [20, 80, 0]),
        })
        con.execute("CREATE TABLE names (kind VARCHAR, i INTEGER, a VARCHAR, b VARCHAR)")
        con.executemany("INSERT INTO names VALUES (?, ?, ?, ?)",
                        [("surname", i, s, r) for i, (s, r) in enumerate(SURNAMES)]
                        + [("given", i, g, r) for i, (g, r) in enumerate(GIVEN_NAMES)]
                        + [("prefecture", i, p, c) for i, (p, c, _w) in enumerate(PREFECTURES)]
                        + [("marketing", i, m, "") for i, m in enumerate(MARKETING)])
        write("customers", "commerce_customer", CUSTOMER_COLUMNS, f"""
            SELECT c.id, c.store_id, 7000000000000 + c.id, g.b || '.' || s.b || '.' || c.id || '@bench.example', '',
                   g.a, s.a, e.a, m.a, 'JP', p.a, p.b, '', 'ENABLED', '', {_stamp('c.added')}, {_stamp('c.added')},
                   {_stamp('c.added')}, 0, 0, NULL::DECIMAL(14, 2), NULL::TIMESTAMP, NULL::TIMESTAMP, '', '', '', '',
                   ''
            FROM c
            JOIN names s ON s.kind = 'surname' AND s.i = c.surname
            JOIN names g ON g.kind = 'given' AND g.i = c.given
            JOIN names p ON p.kind = 'prefecture' AND p.i = c.prefecture
            JOIN names e ON e.kind = 'marketing' AND e.i = c.email_state
            JOIN names m ON m.kind = 'marketing' AND m.i = c.sms_state
            ORDER BY c.id""")
        con.register("t", {"customer_id": customer_ids[tag_customer], "store_id": customer_store[tag_customer],
                           "kind": tag_kind, "added": added[tag_customer]})
        con.execute("CREATE TABLE tag_names (i INTEGER, name VARCHAR)")
        con.executemany("INSERT INTO tag_names VALUES (?, ?)", list(enumerate(CUSTOMER_TAGS)))
        write("customer_tags", "commerce_customertag", TAG_COLUMNS, f"""
            SELECT {first_ids['customer_tag']} + row_number() OVER (ORDER BY t.customer_id, t.kind) - 1, t.store_id,
                   t.customer_id, n.name
            FROM t JOIN tag_names n ON n.i = t.kind ORDER BY 1""")
        # The tag history an import starts (one "added" per tag), as if the store had been imported when its
        # first customer signed up and each tag recorded since: the daily runs then look at the customers
        # whose tags moved, not at everyone.
        write("customer_tag_events", "commerce_customertagevent", TAG_EVENT_COLUMNS, f"""
            SELECT {first_ids['customer_tag_event']} + row_number() OVER (ORDER BY t.customer_id, t.kind) - 1,
                   t.store_id, t.customer_id, n.name, 'added', {_stamp('t.added')}, 'import'
            FROM t JOIN tag_names n ON n.i = t.kind ORDER BY 1""")

    ordinal = "CASE WHEN o.next > 0 AND NOT o.cancelled AND NOT o.test THEN o.next END::INTEGER"
    write("orders", "commerce_order", ORDER_COLUMNS, f"""
        SELECT o.id, o.store_id, 5000000000000 + o.id, '#' || o.n, o.customer_id, '', {_stamp('o.at')},
               {_stamp('o.at')}, {_stamp('o.at')}, 'JPY', o.subtotal, o.discount, COALESCE(k.a, ''), o.shipping,
               CAST(round(o.total * 10 / 110) AS BIGINT), o.total, o.refunded, s.a, '', '', COALESCE(u.a, ''),
               COALESCE(u.b, ''), COALESCE(u.c, ''), '', '', '',
               CASE WHEN o.cancelled THEN 'voided' WHEN o.refunded > 0 THEN 'partially_refunded' ELSE 'paid' END,
               CASE WHEN o.cancelled THEN '' ELSE 'fulfilled' END,
               CASE WHEN o.cancelled THEN {_stamp('o.at + 3600')} END, o.test, {ordinal},
               '{{' || array_to_string(p.ids, ',') || '}}'
        FROM o
        JOIN (SELECT li.order_id, list_sort(list_distinct(list(v.product_id))) AS ids
              FROM li JOIN variant v ON v.v = li.variant AND v.store_id = li.store_id
              GROUP BY li.order_id) AS p ON p.order_id = o.id
        LEFT JOIN lookup k ON k.kind = 'code' AND k.i = o.code
        LEFT JOIN lookup u ON u.kind = 'campaign' AND u.i = o.campaign
        JOIN lookup s ON s.kind = 'source' AND s.i = o.source
        ORDER BY o.id""")
    copies = new_orders_for is not None
    write("line_items", "commerce_lineitem", LINE_COLUMNS + (LINE_COPY_COLUMNS if copies else []), f"""
        SELECT li.id, li.store_id, li.order_id, v.product_id, v.sku, v.title, v.vendor, v.product_type, li.quantity,
               li.price, 0, li.position{f", o.customer_id, {_stamp('o.at')}, {ordinal}" if copies else ""}
        FROM li JOIN variant v ON v.v = li.variant AND v.store_id = li.store_id
        {"JOIN o ON o.id = li.order_id" if copies else ""}
        ORDER BY li.id""")
    for name in ("customers", "customer_tags", "orders", "line_items"):
        if any(path.stem == name for _t, path, _c in files):
            con.execute(f"COPY {name} TO '{directory / name}.parquet' (FORMAT parquet)")
    con.close()
    return Dataset(directory=directory, store_id=store_id, customers=len(customer_ids) if new_orders_for is None else 0,
                   orders=n_orders, line_items=n_lines, customer_tags=n_tags, files=files)


def first_free_ids() -> dict[str, int]:
    """The first id after every existing row of each table the generator writes."""
    from django.db import connection

    firsts = {}
    with connection.cursor() as cursor:
        for key, table in (("customer", "commerce_customer"), ("order", "commerce_order"),
                           ("line_item", "commerce_lineitem"), ("customer_tag", "commerce_customertag"),
                           ("customer_tag_event", "commerce_customertagevent")):
            cursor.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")
            firsts[key] = cursor.fetchone()[0]
    return firsts


def catalogue_create(store) -> list[int]:
    """The demo catalogue's products, variants and tags in ``store``; returns product ids in CATALOGUE order."""
    from django.db import transaction

    from ecpower.commerce.bulk import bulk_insert, sync_id_sequence
    from ecpower.commerce.demo import _catalogue_rows
    from ecpower.commerce.models import Product, ProductTag, ProductVariant

    with transaction.atomic():
        product_rows, variant_rows, tag_rows, products = _catalogue_rows(store)
        bulk_insert(Product, ["id", "store_id", "handle", "title", "product_type", "vendor", "category", "status",
                              "shopify_id"], product_rows)
        bulk_insert(ProductVariant, ["id", "store_id", "product_id", "sku", "title", "price", "position",
                                     "shopify_id"], variant_rows)
        bulk_insert(ProductTag, ["id", "store_id", "product_id", "name"], tag_rows)
        for model in (Product, ProductVariant, ProductTag):
            sync_id_sequence(model)
    return products


def load(dataset: Dataset, *, block: int = 1 << 20) -> None:
    """Stream the dataset's CSV files into PostgreSQL with COPY, in one transaction.

    On SQLite (the test suite's embedded database) the same rows go in with executemany.
    """
    import csv

    from django.db import connection, transaction

    from ecpower.commerce.bulk import sync_id_sequence
    from ecpower.commerce.models import Customer, CustomerTag, CustomerTagEvent, LineItem, Order

    with transaction.atomic(), connection.cursor() as cursor:
        for table, path, columns in dataset.files:
            column_list = ", ".join(connection.ops.quote_name(c) for c in columns)
            if connection.vendor == "postgresql":
                with cursor.cursor.copy(f"COPY {table} ({column_list}) FROM STDIN WITH (FORMAT csv)") as copy, \
                        open(path, "rb") as source:
                    while data := source.read(block):
                        copy.write(data)
                continue
            marks = ", ".join(["%s"] * len(columns))
            with open(path, newline="", encoding="utf-8") as source:
                rows = [[None if value == "" else value for value in row] for row in csv.reader(source)]
            # CSV's quoted "" is an empty string and a bare empty field is NULL; csv.reader cannot tell them
            # apart, so the NOT NULL text columns get their empty string back here.
            nullable, stamps = _column_kinds(table)
            for row in rows:
                for index, column in enumerate(columns):
                    if row[index] is None:
                        row[index] = None if column in nullable else ""
                    elif column == "test":
                        row[index] = row[index] == "true"
                    elif column == "product_ids":  # PostgreSQL's array literal, a JSON list in SQLite
                        row[index] = f"[{row[index][1:-1]}]"
                    elif column in stamps:
                        row[index] = row[index].removesuffix("+00")  # Django keeps naive UTC text in SQLite
            cursor.executemany(f"INSERT INTO {table} ({column_list}) VALUES ({marks})", rows)
        for model in (Customer, CustomerTag, CustomerTagEvent, Order, LineItem):
            sync_id_sequence(model)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for table in ("commerce_customer", "commerce_customertag", "commerce_customertagevent", "commerce_order",
                          "commerce_lineitem"):
                cursor.execute(f"ANALYZE {table}")


def _column_kinds(table: str) -> tuple[set[str], set[str]]:
    from django.apps import apps
    from django.db import models

    model = next(m for m in apps.get_models() if m._meta.db_table == table)
    fields = model._meta.concrete_fields
    return ({f.column for f in fields if f.null},
            {f.column for f in fields if isinstance(f, models.DateTimeField)})
