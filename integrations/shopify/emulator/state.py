"""The emulator's in-memory shops: customers, products, orders, segments, bulk operations.

Records are plain dicts in Shopify's REST shape (snake_case, numeric ids), the shape webhooks
carry; the GraphQL layer (``schema.py``) presents them in GraphQL's shape. One lock guards all
shops: the emulator serves tests and the demo, not production traffic.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import threading
import time
from dataclasses import dataclass, field

UTC = dt.UTC
MAX_TAGS = 250
MAX_TAG_LENGTH = 255


def now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Plan:
    """A rate-limit plan: bucket size and restore rate in points per second."""

    maximum: float = 2000.0
    restore_rate: float = 100.0


PLANS = {"standard": Plan(2000.0, 100.0), "advanced": Plan(4000.0, 200.0), "plus": Plan(20000.0, 1000.0)}


@dataclass
class Faults:
    """Fault injection. Rates are fractions of requests (or of bulk mutation lines)."""

    http_error_rate: float = 0.0  # answered 500/502/503
    throttle_rate: float = 0.0  # answered THROTTLED although the bucket has room
    bulk_line_error_rate: float = 0.0  # a bulk mutation line fails with INTERNAL_SERVER_ERROR
    seed: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self):
        self.rng.seed(self.seed)

    def roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate


class Bucket:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.available = plan.maximum
        self.at = time.monotonic()

    def refill(self) -> float:
        current = time.monotonic()
        self.available = min(self.plan.maximum, self.available + (current - self.at) * self.plan.restore_rate)
        self.at = current
        return self.available

    def status(self) -> dict:
        return {"maximumAvailable": float(self.plan.maximum), "currentlyAvailable": int(self.available),
                "restoreRate": float(self.plan.restore_rate)}


@dataclass
class BulkOperation:
    id: int
    type: str  # QUERY | MUTATION
    query: str
    created_at: dt.datetime
    ready_at: float  # monotonic time when it reports COMPLETED
    lines: list[str] = field(default_factory=list)
    status: str = "CREATED"
    error_code: str | None = None
    root_count: int = 0
    canceled: bool = False

    def current_status(self) -> str:
        if self.status in ("FAILED", "CANCELED"):
            return self.status
        return "COMPLETED" if time.monotonic() >= self.ready_at else "RUNNING"


class Shop:
    def __init__(self, domain: str, *, access_token: str, api_secret: str = "emulator-secret",
                 plan: Plan | None = None, name: str = "", read_all_orders: bool = True):
        self.domain = domain
        self.name = name or domain.split(".")[0]
        self.access_tokens = {access_token}
        self.api_secret = api_secret
        self.plan = plan or PLANS["standard"]
        self.bucket = Bucket(self.plan)
        self.read_all_orders = read_all_orders
        self.faults = Faults()
        self.customers: dict[int, dict] = {}
        self.products: dict[int, dict] = {}
        self.orders: dict[int, dict] = {}
        self.segments: dict[int, dict] = {}
        self.bulk_operations: dict[int, BulkOperation] = {}
        self.bulk_seconds = 0.2  # how long a bulk operation reports RUNNING
        self.oauth_codes: dict[str, dict] = {}
        self.refresh_tokens: dict[str, str] = {}
        self.webhook_url = ""
        self.calls = 0
        self.tag_calls = 0
        self._ids = itertools.count(10_000_000)

    def next_id(self) -> int:
        return next(self._ids)

    # --- records ---------------------------------------------------------------------------

    def add_customer(self, **fields) -> dict:
        stamp = fields.pop("updated_at", None) or now()
        record = {
            "id": fields.pop("id", None) or self.next_id(),
            "first_name": "", "last_name": "", "email": "", "phone": "", "tags": [], "note": "",
            "state": "ENABLED", "email_marketing": "NOT_SUBSCRIBED", "sms_marketing": "NOT_SUBSCRIBED",
            "city": "", "province_code": "", "country_code": "", "zip": "",
            "created_at": fields.pop("created_at", None) or stamp, "updated_at": stamp,
        }
        record.update(fields)
        record["tags"] = _clean_tags(record["tags"])
        self.customers[record["id"]] = record
        return record

    def add_product(self, **fields) -> dict:
        stamp = fields.pop("updated_at", None) or now()
        record = {"id": fields.pop("id", None) or self.next_id(), "handle": "", "title": "", "product_type": "",
                  "vendor": "", "tags": [], "status": "ACTIVE", "category": "", "variants": [],
                  "created_at": stamp, "updated_at": stamp}
        record.update(fields)
        for position, variant in enumerate(record["variants"], 1):
            variant.setdefault("id", self.next_id())
            variant.setdefault("position", position)
        self.products[record["id"]] = record
        return record

    def add_order(self, **fields) -> dict:
        created = fields.pop("created_at", None) or now()
        record = {
            "id": fields.pop("id", None) or self.next_id(), "name": "", "customer_id": None, "email": "",
            "created_at": created, "processed_at": created, "updated_at": fields.pop("updated_at", None) or created,
            "cancelled_at": None, "test": False, "source_name": "web", "discount_codes": [], "tags": [],
            "currency": "JPY", "subtotal": "0", "total_discounts": "0", "shipping": "0", "tax": "0", "total": "0",
            "refunded": "0", "financial_status": "PAID", "fulfillment_status": "UNFULFILLED",
            "landing_site": "", "referring_site": "", "utm": {}, "line_items": [],
        }
        record.update(fields)
        if not record["name"]:
            record["name"] = f"#{1000 + len(self.orders) + 1}"
        for position, item in enumerate(record["line_items"], 1):
            item.setdefault("id", self.next_id())
            item.setdefault("position", position)
        self.orders[record["id"]] = record
        return record

    def tags_change(self, customer_id: int, tags: list[str], *, add: bool) -> list[dict]:
        """tagsAdd / tagsRemove semantics; returns userErrors."""
        customer = self.customers.get(customer_id)
        if customer is None:
            return [{"field": ["id"], "message": f"Customer {customer_id} does not exist"}]
        tags = _clean_tags(tags)
        too_long = [t for t in tags if len(t) > MAX_TAG_LENGTH]
        if too_long:
            return [{"field": ["tags"], "message": f"Tag is too long (maximum is {MAX_TAG_LENGTH} characters)"}]
        have = {t.lower(): t for t in customer["tags"]}
        if add:
            new = [t for t in tags if t.lower() not in have]
            if len(customer["tags"]) + len(new) > MAX_TAGS:
                return [{"field": ["tags"], "message": f"Tags cannot be more than {MAX_TAGS}"}]
            customer["tags"] = customer["tags"] + new
            changed = bool(new)
        else:
            drop = {t.lower() for t in tags}
            kept = [t for t in customer["tags"] if t.lower() not in drop]
            changed = len(kept) != len(customer["tags"])
            customer["tags"] = kept
        if changed:
            customer["updated_at"] = now()
        return []

    def tags_of(self, customer_id: int) -> list[str]:
        return list(self.customers[customer_id]["tags"])


def _clean_tags(tags) -> list[str]:
    if isinstance(tags, str):
        tags = tags.split(",")
    out, seen = [], set()
    for tag in tags:
        tag = tag.strip()
        if tag and tag.lower() not in seen:
            seen.add(tag.lower())
            out.append(tag)
    return out


class World:
    """Every shop the emulator serves, keyed by myshopify domain."""

    def __init__(self):
        self.lock = threading.RLock()
        self.shops: dict[str, Shop] = {}
        self.uploads: dict[str, bytes] = {}
        self.bulk_ids = itertools.count(5_000_000)
        # Oldest supported stable version: older requests are answered by it (fall forward).
        self.oldest_supported = "2025-10"
        self.app_key = "emulator-app"
        self.app_secret = "emulator-app-secret"

    def add_shop(self, domain: str, **kwargs) -> Shop:
        with self.lock:
            shop = Shop(domain, **kwargs)
            self.shops[domain] = shop
            return shop

    def shop(self, domain: str) -> Shop | None:
        return self.shops.get(domain)
