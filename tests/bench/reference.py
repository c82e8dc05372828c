"""The benchmark's 20 segments, and the same segments written by hand in DuckDB SQL over Parquet.

``SEGMENTS`` are the queries the project recomputes (every condition family: order facts, absolute
and relative dates, tags, location, consent, first-order attributes, ``products_purchased`` with
count, quantity and order number, ``orders_placed``, OR, NOT and ``in_segment``).

``DuckDBReference`` answers the same questions from a Parquet copy of the store's raw rows,
deriving what it needs (counted orders, their ordinals, per-customer aggregates) itself. It is the
benchmark's reference for how fast this machine can answer them, and an independent
implementation of docs/segments.md: its members must equal the project's.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

SEGMENTS = {
    "first-time": "number_of_orders = 1",
    "loyal": "number_of_orders >= 5",
    "repeat-range": "number_of_orders BETWEEN 2 AND 4",
    "high-spend": "amount_spent >= 50000",
    "high-aov": "average_order_value >= 8000",
    "dormant": "number_of_orders >= 1 AND last_order_date < -90d",
    "at-risk": "number_of_orders >= 2 AND last_order_date BETWEEN -180d AND -60d",
    "new-30d": "first_order_date >= -30d",
    "added-this-year": "customer_added_date >= -1y",
    "line-linked": "customer_tags CONTAINS 'LINE連携'",
    "tokyo-subscribers": "customer_regions CONTAINS 'JP-13' AND email_subscription_status = 'SUBSCRIBED'",
    "first-code": "first_order_discount_code = 'WELCOME10' OR first_order_utm_campaign IS NOT NULL",
    "tea-3x-year": "products_purchased MATCHES (tag = 'tea', date > -1y, count >= 3)",
    "ware-first-order": "products_purchased MATCHES (product_type = '器', order_number = 1)",
    "matcha-2-to-5": "products_purchased MATCHES (tag = 'matcha', order_number BETWEEN 2 AND 5)",
    "sencha-quantity": "products_purchased MATCHES (sku IN ('TEA-SEN-50', 'TEA-SEN-100'), sum_quantity >= 4)",
    "no-recent-purchase": "products_purchased NOT MATCHES (date > -3m) AND number_of_orders >= 1",
    "frequent-year": "orders_placed MATCHES (date >= -12m, count >= 3)",
    "loyal-not-dormant": "in_segment('loyal') AND NOT in_segment('dormant')",
    "either": "NOT (number_of_orders = 0 OR amount_spent < 3000) AND (in_segment('tea-3x-year') OR "
              "customer_tags CONTAINS 'subscription')",
}


def write_catalogue_parquet(store, directory: Path) -> None:
    """Products and product tags of ``store`` as Parquet beside the generated rows."""
    from ecpower.commerce.models import Product, ProductTag

    con = duckdb.connect()
    con.execute("CREATE TABLE products (id BIGINT, product_type VARCHAR, vendor VARCHAR)")
    con.executemany("INSERT INTO products VALUES (?, ?, ?)",
                    list(Product.objects.filter(store=store).values_list("id", "product_type", "vendor")))
    con.execute("CREATE TABLE product_tags (product_id BIGINT, name VARCHAR)")
    con.executemany("INSERT INTO product_tags VALUES (?, ?)",
                    list(ProductTag.objects.filter(store=store).values_list("product_id", "name")))
    for table in ("products", "product_tags"):
        con.execute(f"COPY {table} TO '{directory / table}.parquet' (FORMAT parquet)")
    con.close()


@dataclass
class Bounds:
    """Start of each day the 20 queries name, as UTC instants (the store's calendar days)."""

    values: dict[str, dt.datetime]

    @classmethod
    def for_store(cls, store, as_of: dt.date) -> Bounds:
        from segments.rules import resolve_date

        def start(value: str, plus: int = 0) -> dt.datetime:
            day = resolve_date(value, as_of) + dt.timedelta(days=plus)
            moment = dt.datetime.combine(day, dt.time.min, tzinfo=store.zone)
            return moment.astimezone(dt.UTC).replace(tzinfo=None)

        return cls({
            "before_90d": start("-90d"), "from_180d": start("-180d"), "until_60d": start("-60d", 1),
            "from_30d": start("-30d"), "added_1y": start("-1y"), "after_1y": start("-1y", 1),
            "after_3m": start("-3m", 1), "from_12m": start("-12m"), "end": start("+0d", 1),
        })


class DuckDBReference:
    """The 20 segments in DuckDB SQL over the Parquet files of one generated store."""

    def __init__(self, directory: Path, *, threads: int = 2):
        self.directory = directory
        self.con = duckdb.connect()
        self.con.execute(f"SET threads TO {threads}")

    def _parquet(self, name: str) -> str:
        return f"read_parquet('{self.directory / name}.parquet')"

    def run(self, bounds: Bounds) -> tuple[dict[str, set[int]], float]:
        """Members of each segment and the seconds it took (from reading Parquet to the last answer)."""
        b = {k: f"TIMESTAMP '{v:%Y-%m-%d %H:%M:%S}'" for k, v in bounds.values.items()}
        con = self.con
        started = time.perf_counter()
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE counted AS
            SELECT id, customer_id, created_at, total - refunded_amount AS net, discount_code, utm_campaign,
                   row_number() OVER (PARTITION BY customer_id ORDER BY created_at, id) AS ordinal
            FROM {self._parquet('orders')}
            WHERE customer_id IS NOT NULL AND cancelled_at IS NULL AND NOT test AND created_at < {b['end']}""")
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE facts AS
            SELECT c.id, c.shopify_created_at AS added, c.email_marketing, c.province_code,
                   count(o.id) AS n, coalesce(sum(o.net), 0) AS spent, min(o.created_at) AS first_at,
                   max(o.created_at) AS last_at,
                   coalesce(arg_min(o.discount_code, o.ordinal), '') AS first_code,
                   coalesce(arg_min(o.utm_campaign, o.ordinal), '') AS first_campaign
            FROM {self._parquet('customers')} c LEFT JOIN counted o ON o.customer_id = c.id
            GROUP BY ALL""")
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE lines AS
            SELECT o.customer_id, o.id AS order_id, o.ordinal, o.created_at, l.quantity, lower(l.sku) AS sku,
                   lower(l.product_type) AS line_type, lower(p.product_type) AS product_type, l.product_id
            FROM {self._parquet('line_items')} l JOIN counted o ON o.id = l.order_id
            LEFT JOIN {self._parquet('products')} p ON p.id = l.product_id""")
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE product_tag AS
            SELECT DISTINCT product_id, lower(name) AS name FROM {self._parquet('product_tags')}""")
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE tagged AS
            SELECT DISTINCT customer_id, lower(name) AS name FROM {self._parquet('customer_tags')}""")

        def tag(name: str) -> str:
            return f"SELECT product_id FROM product_tag WHERE name = '{name}'"

        queries = {
            "first-time": "SELECT id FROM facts WHERE n = 1",
            "loyal": "SELECT id FROM facts WHERE n >= 5",
            "repeat-range": "SELECT id FROM facts WHERE n BETWEEN 2 AND 4",
            "high-spend": "SELECT id FROM facts WHERE spent >= 50000",
            "high-aov": "SELECT id FROM facts WHERE n > 0 AND round(spent::DECIMAL(18, 2) / n, 2) >= 8000",
            "dormant": f"SELECT id FROM facts WHERE n >= 1 AND last_at < {b['before_90d']}",
            "at-risk": f"SELECT id FROM facts WHERE n >= 2 AND last_at >= {b['from_180d']} "
                       f"AND last_at < {b['until_60d']}",
            "new-30d": f"SELECT id FROM facts WHERE first_at >= {b['from_30d']}",
            "added-this-year": f"SELECT id FROM facts WHERE added >= {b['added_1y']}",
            "line-linked": "SELECT customer_id FROM tagged WHERE name = lower('LINE連携')",
            "tokyo-subscribers": "SELECT id FROM facts WHERE lower(province_code) = 'jp-13' "
                                 "AND email_marketing = 'SUBSCRIBED'",
            "first-code": "SELECT id FROM facts WHERE lower(first_code) = 'welcome10' OR first_campaign <> ''",
            "tea-3x-year": f"SELECT customer_id FROM lines WHERE product_id IN ({tag('tea')}) "
                           f"AND created_at >= {b['after_1y']} GROUP BY customer_id "
                           "HAVING count(DISTINCT order_id) >= 3",
            "ware-first-order": "SELECT customer_id FROM lines WHERE ordinal = 1 "
                                "AND (line_type = '器' OR product_type = '器')",
            "matcha-2-to-5": f"SELECT customer_id FROM lines WHERE product_id IN ({tag('matcha')}) "
                             "AND ordinal BETWEEN 2 AND 5",
            "sencha-quantity": "SELECT customer_id FROM lines WHERE sku IN ('tea-sen-50', 'tea-sen-100') "
                               "GROUP BY customer_id HAVING sum(quantity) >= 4",
            "no-recent-purchase": f"SELECT id FROM facts WHERE n >= 1 AND id NOT IN "
                                  f"(SELECT customer_id FROM lines WHERE created_at >= {b['after_3m']})",
            "frequent-year": f"SELECT customer_id FROM counted WHERE created_at >= {b['from_12m']} "
                             "GROUP BY customer_id HAVING count(*) >= 3",
        }
        members: dict[str, set[int]] = {}
        for slug, sql in queries.items():
            members[slug] = {row[0] for row in con.execute(sql).fetchall()}
        members["loyal-not-dormant"] = members["loyal"] - members["dormant"]
        spenders = {row[0] for row in con.execute("SELECT id FROM facts WHERE n > 0 AND spent >= 3000").fetchall()}
        members["either"] = spenders & (members["tea-3x-year"] | {
            row[0] for row in con.execute("SELECT customer_id FROM tagged WHERE name = 'subscription'").fetchall()})
        return members, time.perf_counter() - started
