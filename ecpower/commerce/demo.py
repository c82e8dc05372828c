"""A deterministic, realistic Japanese D2C demo store (a tea and tableware brand).

Same seed and same ``until`` date give the same store, row for row. Shape, roughly:
15 % of customers never order; of buyers about 60 % order once and the rest repeat with a long
tail of loyal customers; orders follow Japanese gift seasons (お中元, お歳暮, 母の日); first orders
carry discount codes and UTM campaigns; a few orders are cancelled, refunded or test orders;
customers carry tags such as ``LINE連携``, ``subscription`` and AiTrillion-style tier tags.
"""

from __future__ import annotations

import datetime as dt
import random
import zoneinfo
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.db import connection, transaction

from ecpower.commerce.bulk import bulk_insert, reserve_ids, sync_id_sequence
from ecpower.commerce.models import (
    Customer,
    CustomerTag,
    LineItem,
    Order,
    Product,
    ProductTag,
    ProductVariant,
    Store,
)

SURNAMES = [
    ("佐藤", "sato"), ("鈴木", "suzuki"), ("高橋", "takahashi"), ("田中", "tanaka"), ("伊藤", "ito"),
    ("渡辺", "watanabe"), ("山本", "yamamoto"), ("中村", "nakamura"), ("小林", "kobayashi"), ("加藤", "kato"),
    ("吉田", "yoshida"), ("山田", "yamada"), ("佐々木", "sasaki"), ("山口", "yamaguchi"), ("松本", "matsumoto"),
    ("井上", "inoue"), ("木村", "kimura"), ("林", "hayashi"), ("斎藤", "saito"), ("清水", "shimizu"),
    ("山崎", "yamazaki"), ("森", "mori"), ("池田", "ikeda"), ("橋本", "hashimoto"), ("阿部", "abe"),
    ("石川", "ishikawa"), ("前田", "maeda"), ("藤田", "fujita"), ("小川", "ogawa"), ("岡田", "okada"),
]
GIVEN_NAMES = [
    ("陽子", "yoko"), ("恵子", "keiko"), ("美咲", "misaki"), ("由美", "yumi"), ("さくら", "sakura"),
    ("愛", "ai"), ("真由美", "mayumi"), ("直子", "naoko"), ("結衣", "yui"), ("花子", "hanako"),
    ("彩", "aya"), ("千尋", "chihiro"), ("優子", "yuko"), ("明美", "akemi"), ("智子", "tomoko"),
    ("大輔", "daisuke"), ("健太", "kenta"), ("翔太", "shota"), ("拓也", "takuya"), ("誠", "makoto"),
    ("隆", "takashi"), ("浩", "hiroshi"), ("蓮", "ren"), ("悠真", "yuma"), ("太郎", "taro"),
]
# (province code, city, weight ≈ share of online shoppers)
PREFECTURES = [
    ("JP-13", "渋谷区", 14), ("JP-14", "横浜市", 9), ("JP-27", "大阪市", 8), ("JP-23", "名古屋市", 6),
    ("JP-11", "さいたま市", 6), ("JP-12", "千葉市", 5), ("JP-28", "神戸市", 4), ("JP-01", "札幌市", 4),
    ("JP-40", "福岡市", 4), ("JP-22", "静岡市", 3), ("JP-26", "京都市", 2), ("JP-34", "広島市", 2),
    ("JP-04", "仙台市", 2), ("JP-08", "水戸市", 2), ("JP-20", "長野市", 1), ("JP-15", "新潟市", 1),
    ("JP-33", "岡山市", 1), ("JP-43", "熊本市", 1), ("JP-47", "那覇市", 1), ("JP-17", "金沢市", 1),
]

# handle, title, product type, vendor, tags, [(sku, variant title, price)], popularity weight
CATALOGUE = [
    ("sencha-yabukita", "煎茶 やぶきた", "緑茶", "静岡茶園", ["tea", "green-tea", "bestseller"],
     [("TEA-SEN-50", "50g", 1080), ("TEA-SEN-100", "100g", 1944)], 16),
    ("gyokuro-premium", "玉露 極", "緑茶", "八女茶園", ["tea", "green-tea", "premium"],
     [("TEA-GYO-50", "50g", 3240)], 5),
    ("hojicha", "ほうじ茶 香", "ほうじ茶", "静岡茶園", ["tea", "roasted"],
     [("TEA-HOJ-80", "80g", 972), ("TEA-HOJ-TB", "ティーバッグ 20包", 1296)], 12),
    ("matcha-uji", "宇治抹茶 雅", "抹茶", "宇治茶房", ["tea", "matcha", "premium"],
     [("TEA-MAT-30", "30g", 2916)], 8),
    ("genmaicha", "玄米茶", "緑茶", "静岡茶園", ["tea", "green-tea"],
     [("TEA-GEN-100", "100g", 864)], 7),
    ("wakocha", "和紅茶 べにふうき", "紅茶", "鹿児島茶園", ["tea", "black-tea", "new"],
     [("TEA-WAK-50", "50g", 1620)], 5),
    ("cold-brew-set", "水出し緑茶セット", "緑茶", "静岡茶園", ["tea", "summer", "green-tea"],
     [("TEA-CLD-SET", "10包", 1404)], 4),
    ("yunomi-aizome", "藍染 湯呑み", "器", "有田窯", ["tableware", "color:blue", "handmade"],
     [("CUP-AIZ-S", "小", 2420), ("CUP-AIZ-L", "大", 2860)], 5),
    ("yunomi-shiro", "白磁 湯呑み", "器", "有田窯", ["tableware", "color:white"],
     [("CUP-SHI-S", "小", 1980)], 4),
    ("kyusu-ruri", "瑠璃釉 急須", "器", "常滑窯", ["tableware", "color:blue", "teapot"],
     [("POT-RUR", "Default Title", 6600)], 3),
    ("kyusu-kokudei", "黒泥 急須", "器", "常滑窯", ["tableware", "color:black", "teapot"],
     [("POT-KOK", "Default Title", 5500)], 2),
    ("chawan-seiji", "青磁 抹茶碗", "器", "京焼 清閑", ["tableware", "color:blue", "matcha"],
     [("BWL-SEI", "Default Title", 4950)], 2),
    ("tea-canister", "銅製 茶筒", "道具", "開化堂", ["tools", "gift"],
     [("CAN-COP", "Default Title", 8800)], 1),
    ("chasen", "茶筅 八十本立", "道具", "高山茶筌", ["tools", "matcha"],
     [("TLS-CHA", "Default Title", 3300)], 2),
    ("wagashi-yokan", "本練り羊羹", "和菓子", "老舗 菓匠", ["sweets", "gift"],
     [("SWT-YOK", "1本", 1620)], 6),
    ("wagashi-monaka", "抹茶最中 6個入", "和菓子", "老舗 菓匠", ["sweets", "matcha"],
     [("SWT-MON-6", "6個入", 1944)], 5),
    ("gift-ochugen", "夏のギフトセット", "ギフト", "自社", ["gift", "summer", "seasonal"],
     [("GFT-SUM", "Default Title", 5400)], 3),
    ("gift-oseibo", "冬のギフトセット", "ギフト", "自社", ["gift", "winter", "seasonal"],
     [("GFT-WIN", "Default Title", 5940)], 3),
    ("gift-wrapping", "ギフト包装", "サービス", "自社", ["service", "gift-wrapping"],
     [("SRV-WRAP", "Default Title", 330)], 4),
    ("subscription-monthly", "毎月の茶葉定期便", "定期便", "自社", ["subscription", "tea"],
     [("SUB-MON", "月1回", 2980)], 4),
]
PRODUCT_LINES = {"tea": [0, 1, 2, 3, 4, 5, 6, 19], "ware": [7, 8, 9, 10, 11, 12, 13], "sweets": [14, 15, 16, 17]}
FIRST_ORDER_CODES = [("WELCOME10", 10), ("LINE500", 5), ("SPRING2025", 3), ("MOTHERSDAY", 2), ("SAMPLE300", 2)]
CAMPAIGNS = [
    ("instagram", "paid_social", "insta_spring", 6),
    ("line", "social", "line_friend", 6),
    ("google", "cpc", "google_shopping", 5),
    ("newsletter", "email", "welcome_mail", 3),
    ("yahoo", "cpc", "yahoo_brand", 2),
    ("tiktok", "paid_social", "tiktok_matcha", 2),
]
SOURCES = [("web", 86), ("pos", 7), ("shopify_draft_order", 3), ("580111", 4)]
# Gift seasons: Mother's day (May), お中元 (July), お歳暮 (December) sell more.
MONTH_WEIGHT = {1: 0.8, 2: 0.8, 3: 0.9, 4: 1.0, 5: 1.3, 6: 1.1, 7: 1.4, 8: 1.0, 9: 0.9, 10: 1.0, 11: 1.2, 12: 1.8}

SHOPIFY_ID_BASE = 7_000_000_000_000
ORDER_ID_BASE = 5_000_000_000_000


@dataclass
class DemoSummary:
    customers: int
    orders: int
    line_items: int
    products: int


def _weighted(rng: random.Random, items: list, weights: list[float]):
    return rng.choices(items, weights=weights, k=1)[0]


def generate_demo_store(*, store: Store, customers: int, seed: int, until: dt.date, years: float = 2.5) -> DemoSummary:
    """Fill an empty store with demo data. Raises ValueError if the store already has customers."""
    if Customer.objects.filter(store=store).exists():
        raise ValueError(f"Store {store.shopify_domain} already has customers; delete its data first.")
    rng = random.Random(seed)
    zone = zoneinfo.ZoneInfo(store.time_zone)
    end = dt.datetime.combine(until, dt.time(23, 59, 59), tzinfo=zone)
    start = end - dt.timedelta(days=int(365 * years))
    span = (end - start).total_seconds()

    def seasonal_time(after: dt.datetime) -> dt.datetime:
        window = (end - after).total_seconds()
        while True:
            moment = after + dt.timedelta(seconds=rng.random() * window)
            if rng.random() * 1.8 <= MONTH_WEIGHT[moment.month]:
                # Shoppers buy in the daytime and evening, Japan time.
                hour = _weighted(rng, list(range(24)), [1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 7, 6, 6, 7, 8, 9, 10, 11, 10, 7, 3])
                return moment.astimezone(zone).replace(hour=hour, minute=rng.randrange(60), second=rng.randrange(60), microsecond=0)

    with transaction.atomic():
        product_rows, variant_rows, tag_rows, products = _catalogue_rows(store)
        bulk_insert(Product, ["id", "store_id", "handle", "title", "product_type", "vendor", "category", "status", "shopify_id"], product_rows)
        bulk_insert(ProductVariant, ["id", "store_id", "product_id", "sku", "title", "price", "position", "shopify_id"], variant_rows)
        bulk_insert(ProductTag, ["id", "store_id", "product_id", "name"], tag_rows)
        for model in (Product, ProductVariant, ProductTag):
            sync_id_sequence(model)

        first_customer_id = reserve_ids(Customer, customers)
        customer_rows = []
        customer_tags: list[tuple[int, str]] = []
        orders: list[dict] = []
        prefecture_weights = [w for _c, _city, w in PREFECTURES]
        for n in range(customers):
            customer_id = first_customer_id + n
            surname, surname_roman = _weighted(rng, SURNAMES, [1] * len(SURNAMES))
            given, given_roman = _weighted(rng, GIVEN_NAMES, [1] * len(GIVEN_NAMES))
            province, city, _w = _weighted(rng, PREFECTURES, prefecture_weights)
            added = start + dt.timedelta(seconds=rng.random() * span * 0.97)
            email_marketing = "SUBSCRIBED" if rng.random() < 0.55 else _weighted(rng, ["NOT_SUBSCRIBED", "UNSUBSCRIBED"], [3, 1])
            sms_marketing = "SUBSCRIBED" if rng.random() < 0.2 else "NOT_SUBSCRIBED"
            phone = f"+8190{rng.randrange(10_000_000, 99_999_999)}" if rng.random() < 0.6 else ""
            email = f"{given_roman}.{surname_roman}.{n}@example.jp"
            customer_rows.append(
                (
                    customer_id, store.pk, SHOPIFY_ID_BASE + customer_id, email,
                    phone, given, surname, email_marketing, sms_marketing, "JP", province, city,
                    f"{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}", "ENABLED", "", added, added, added,
                )
            )
            if rng.random() < 0.3:
                customer_tags.append((customer_id, "LINE連携"))
            if rng.random() < 0.02:
                customer_tags.append((customer_id, "wholesale"))
            orders.extend(_customer_orders(rng, customer_id, email, added, end, seasonal_time, customer_tags))


        orders.sort(key=lambda o: (o["created_at"], o["customer_id"] or 0, o["email"]))
        first_order_id = reserve_ids(Order, len(orders))
        line_count = sum(len(o["lines"]) for o in orders)
        first_line_id = reserve_ids(LineItem, line_count)
        order_rows, line_rows = [], []
        facts: dict[int, dict] = {}
        line_id = first_line_id
        for index, order in enumerate(orders):
            order_id = first_order_id + index
            subtotal = Decimal(0)
            order_lines = []
            for position, (product_index, variant_index, quantity) in enumerate(order["lines"], 1):
                handle, title, product_type, vendor, _tags, variants, _w = CATALOGUE[product_index]
                sku, variant_title, price = variants[variant_index]
                unit_price = Decimal(price)
                subtotal += unit_price * quantity
                order_lines.append(
                    (
                        line_id, store.pk, order_id, products[product_index], sku,
                        title if variant_title == "Default Title" else f"{title} - {variant_title}",
                        vendor, product_type, quantity, unit_price, Decimal(0), position,
                    )
                )
                line_id += 1
            discount = (subtotal * Decimal("0.10")).quantize(Decimal("1")) if order["discount_code"] else Decimal(0)
            shipping = Decimal(0) if subtotal - discount >= 5000 else Decimal(660)
            total = subtotal - discount + shipping
            tax = (total * Decimal(10) / Decimal(110)).quantize(Decimal("1"))  # prices include 10 % tax
            refunded = Decimal(0)
            financial_status = "paid"
            if order["refund"] == "full":
                refunded, financial_status = total, "refunded"
            elif order["refund"] == "partial":
                refunded, financial_status = (total * Decimal("0.3")).quantize(Decimal("1")), "partially_refunded"
            cancelled_at = None
            if order["cancelled"]:
                cancelled_at = order["created_at"] + dt.timedelta(hours=rng.randrange(1, 48))
                financial_status = "voided"
            created_at = order["created_at"]
            # Orders are numbered in (created_at, id) order, so counting as we go gives the ordinal
            # that customer_facts_refresh would compute (a test holds the two equal).
            ordinal = None
            if order["customer_id"] and not cancelled_at and not order["test"]:
                fact = facts.get(order["customer_id"])
                if fact is None:
                    fact = facts[order["customer_id"]] = {
                        "n": 0, "spent": Decimal(0), "first_at": created_at, "code": order["discount_code"],
                        "source": order["source"], "utm": order["utm"],
                    }
                fact["n"] += 1
                fact["spent"] += total - refunded
                fact["last_at"] = created_at
                ordinal = fact["n"]
            # Line items carry their order's customer, time and ordinal, as customer_facts_refresh keeps them.
            line_rows.extend(line + (order["customer_id"], created_at, ordinal) for line in order_lines)
            order_rows.append(
                (
                    order_id, store.pk, ORDER_ID_BASE + order_id, f"#{1001 + index}", order["customer_id"],
                    order["email"], created_at, created_at, created_at, "JPY", subtotal, discount,
                    order["discount_code"], shipping, tax, total, refunded, order["source"], order["landing_site"], "",
                    order["utm"][0], order["utm"][1], order["utm"][2], "", "", "", financial_status,
                    "fulfilled" if not cancelled_at else "", cancelled_at, order["test"], ordinal,
                    sorted({products[product_index] for product_index, _variant, _quantity in order["lines"]}),
                )
            )

        bulk_insert(
            Customer,
            [
                "id", "store_id", "shopify_id", "email", "phone", "first_name", "last_name", "email_marketing",
                "sms_marketing", "country_code", "province_code", "city", "zip", "state", "note",
                "shopify_created_at", "shopify_updated_at", "created_at", "orders_count", "amount_spent",
                "average_order_value", "first_order_at", "last_order_at", "first_order_discount_code",
                "first_order_source", "first_order_utm_source", "first_order_utm_medium", "first_order_utm_campaign",
            ],
            (row + _fact_columns(facts.get(row[0])) for row in customer_rows),
        )

        bulk_insert(
            Order,
            [
                "id", "store_id", "shopify_id", "name", "customer_id", "email", "created_at", "processed_at",
                "shopify_updated_at", "currency", "subtotal", "total_discounts", "discount_code", "shipping", "tax",
                "total", "refunded_amount", "source_name", "landing_site", "referring_site", "utm_source",
                "utm_medium", "utm_campaign", "utm_content", "utm_term", "tags", "financial_status",
                "fulfillment_status", "cancelled_at", "test", "ordinal", "product_ids",
            ],
            order_rows,
        )
        bulk_insert(
            LineItem,
            ["id", "store_id", "order_id", "product_id", "sku", "title", "vendor", "product_type", "quantity", "unit_price", "discount", "position",
             "customer_id", "ordered_at", "ordinal"],
            line_rows,
        )
        for customer_id, fact in facts.items():
            amount = fact["spent"]
            tier = "AIT-Tier-Gold" if amount >= 50000 else "AIT-Tier-Silver" if amount >= 20000 else "AIT-Tier-Bronze"
            customer_tags.append((customer_id, tier))
        first_tag_id = reserve_ids(CustomerTag, len(customer_tags))
        bulk_insert(
            CustomerTag,
            ["id", "store_id", "customer_id", "name"],
            ((first_tag_id + i, store.pk, cid, name) for i, (cid, name) in enumerate(sorted(set(customer_tags)))),
        )
        for model in (Customer, Order, LineItem, CustomerTag):
            sync_id_sequence(model)
    if connection.vendor == "postgresql":
        # Fresh statistics, so the first segment queries on the new data get sensible plans.
        with connection.cursor() as cursor:
            for model in (Customer, CustomerTag, Order, LineItem):
                cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
    return DemoSummary(customers=customers, orders=len(order_rows), line_items=len(line_rows), products=len(CATALOGUE))


def _fact_columns(fact: dict | None) -> tuple:
    """Customer facts as docs/data-model.md defines them, from the generator's running totals."""
    if fact is None:
        return (0, Decimal(0), None, None, None, "", "", "", "", "")
    aov = (fact["spent"] / fact["n"]).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    source, medium, campaign = fact["utm"]
    return (fact["n"], fact["spent"], aov, fact["first_at"], fact["last_at"], fact["code"], fact["source"], source, medium, campaign)


def _catalogue_rows(store: Store):
    first_product = reserve_ids(Product, len(CATALOGUE))
    first_variant = reserve_ids(ProductVariant, sum(len(p[5]) for p in CATALOGUE))
    first_tag = reserve_ids(ProductTag, sum(len(p[4]) for p in CATALOGUE))
    product_rows, variant_rows, tag_rows, products = [], [], [], []
    variant_id, tag_id = first_variant, first_tag
    for index, (handle, title, product_type, vendor, tags, variants, _w) in enumerate(CATALOGUE):
        product_id = first_product + index
        products.append(product_id)
        product_rows.append((product_id, store.pk, handle, title, product_type, vendor, "", "active", 8_000_000_000_000 + product_id))
        for position, (sku, variant_title, price) in enumerate(variants, 1):
            variant_rows.append((variant_id, store.pk, product_id, sku, variant_title, Decimal(price), position, 9_000_000_000_000 + variant_id))
            variant_id += 1
        for tag in tags:
            tag_rows.append((tag_id, store.pk, product_id, tag))
            tag_id += 1
    return product_rows, variant_rows, tag_rows, products


def _customer_orders(rng, customer_id, email, added, end, seasonal_time, customer_tags) -> list[dict]:
    """The orders of one customer: none, one, or a repeat history with a personal rhythm."""
    roll = rng.random()
    if roll < 0.15:
        return []  # a prospect: signed up, never ordered
    if roll < 0.15 + 0.85 * 0.5:  # about 60 % of buyers end up ordering once (history is cut at `until`)
        planned = 1
    else:
        planned = 2 + min(int(rng.expovariate(0.35)), 38)
    line = _weighted(rng, list(PRODUCT_LINES), [6, 2, 2])
    favourites = PRODUCT_LINES[line]
    interval_days = rng.uniform(20, 120)
    subscriber = planned >= 4 and rng.random() < 0.3
    if subscriber:
        customer_tags.append((customer_id, "subscription"))
    orders = []
    when = seasonal_time(added)
    for k in range(planned):
        if when > end:
            break
        first = k == 0
        code, utm, landing = "", ("", "", ""), ""
        if first and rng.random() < 0.35:
            code = _weighted(rng, [c for c, _w in FIRST_ORDER_CODES], [w for _c, w in FIRST_ORDER_CODES])
        if first and rng.random() < 0.45:
            source, medium, campaign, _w = _weighted(rng, CAMPAIGNS, [c[3] for c in CAMPAIGNS])
            utm = (source, medium, campaign)
            landing = f"/?utm_source={source}&utm_medium={medium}&utm_campaign={campaign}"
        lines = []
        for _ in range(_weighted(rng, [1, 2, 3, 4], [5, 3, 1.5, 0.5])):
            if subscriber and not lines:
                product_index = 19
            elif rng.random() < 0.7:
                product_index = rng.choice(favourites)
            else:
                product_index = _weighted(rng, list(range(len(CATALOGUE))), [p[6] for p in CATALOGUE])
            if any(existing[0] == product_index for existing in lines):
                continue
            variant_index = rng.randrange(len(CATALOGUE[product_index][5]))
            lines.append((product_index, variant_index, _weighted(rng, [1, 2, 3], [8, 2, 0.5])))
        roll = rng.random()
        orders.append(
            {
                "customer_id": customer_id,
                "email": email,
                "created_at": when,
                "lines": lines,
                "discount_code": code,
                "utm": utm,
                "landing_site": landing,
                "source": _weighted(rng, [s for s, _w in SOURCES], [w for _s, w in SOURCES]),
                "cancelled": roll < 0.02,
                "refund": "full" if 0.02 <= roll < 0.035 else "partial" if 0.035 <= roll < 0.06 else "",
                "test": 0.06 <= roll < 0.062,
            }
        )
        gap = rng.expovariate(1 / interval_days) if not subscriber else rng.uniform(27, 34)
        when = (when + dt.timedelta(days=max(gap, 1), hours=rng.uniform(-6, 6))).replace(microsecond=0)
    # A few guest orders ride along (no customer record, an email only).
    if rng.random() < 0.03:
        orders.append(
            {
                "customer_id": None,
                "email": f"guest{customer_id}@example.jp",
                "created_at": seasonal_time(added),
                "lines": [(rng.randrange(len(CATALOGUE)), 0, 1)],
                "discount_code": "",
                "utm": ("", "", ""),
                "landing_site": "",
                "source": "web",
                "cancelled": False,
                "refund": "",
                "test": False,
            }
        )
    return [o for o in orders if o["lines"]]

