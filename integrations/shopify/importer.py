"""Import a shop's customers, products and orders from the Admin API.

* ``import_full``: three bulk query operations (customers; products with variants; orders with
  line items), read back as JSONL with ``__parentId`` and upserted.
* ``import_changes``: paginated queries filtered by ``updated_at:>'<last run>'``.

Both convert Shopify's GraphQL shapes into the records the CSV import already writes
(``ecpower.commerce.csv_import.records_import``), so one upsert path serves both, and the
facts service refreshes the customers touched. The mark for the next incremental run is the
instant this run started (minus a minute of overlap), saved only when the run succeeds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import parse_qs, urlparse

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ecpower.commerce.csv_import import ImportSummary, records_import
from ecpower.commerce.models import Store
from ecpower.commerce.shopify_csv import CustomerRecord, LineItemRecord, OrderRecord, ProductRecord, VariantRecord
from integrations.models import ShopifyConnection
from integrations.shopify.client import ShopifyClient, gid_id
from integrations.shopify.connection import client_for

Progress = Callable[[str, int, int], None]
OVERLAP = dt.timedelta(minutes=1)

CUSTOMER_FIELDS = """
  id firstName lastName note state tags createdAt updatedAt
  defaultEmailAddress { emailAddress marketingState }
  defaultPhoneNumber { phoneNumber marketingState }
  defaultAddress { city provinceCode countryCodeV2 zip }
"""
PRODUCT_FIELDS = "id handle title productType vendor tags status createdAt updatedAt category { fullName }"
VARIANT_FIELDS = "id sku title price position"
MONEY = "{ shopMoney { amount } }"
ORDER_FIELDS = f"""
  id name email createdAt processedAt updatedAt cancelledAt test sourceName discountCodes tags
  currencyCode displayFinancialStatus displayFulfillmentStatus
  subtotalPriceSet {MONEY} totalDiscountsSet {MONEY} totalShippingPriceSet {MONEY}
  totalTaxSet {MONEY} totalPriceSet {MONEY} totalRefundedSet {MONEY}
  customer {{ id }}
  customerJourneySummary {{ firstVisit {{ landingPage referrerUrl
    utmParameters {{ source medium campaign content term }} }} }}
"""
LINE_ITEM_FIELDS = f"id title sku vendor quantity originalUnitPriceSet {MONEY} totalDiscountSet {MONEY}"


@dataclass
class ShopifyImport:
    summary: ImportSummary
    fetched: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {**self.summary.as_dict(), "fetched": self.fetched, "warnings": self.warnings}


def _noop(stage: str, done: int, total: int) -> None:
    return None


def import_full(*, store: Store, progress: Progress | None = None, client: ShopifyClient | None = None
                ) -> ShopifyImport:
    """Everything, through bulk operations."""
    progress = progress or _noop
    client = client or client_for(store)
    started = timezone.now()
    queries = {
        "customers": f"{{ customers {{ edges {{ node {{ {CUSTOMER_FIELDS} }} }} }} }}",
        "products": f"{{ products {{ edges {{ node {{ {PRODUCT_FIELDS} "
                    f"variants {{ edges {{ node {{ {VARIANT_FIELDS} }} }} }} }} }} }} }}",
        "orders": f"{{ orders {{ edges {{ node {{ {ORDER_FIELDS} "
                  f"lineItems {{ edges {{ node {{ {LINE_ITEM_FIELDS} }} }} }} }} }} }} }}",
    }
    lines: dict[str, list[dict]] = {}
    for stage, query in queries.items():
        progress(f"bulk {stage}", 0, 0)
        operation_id = client.bulk_query(query)
        operation = client.bulk_wait(
            operation_id, on_progress=lambda op, s=stage: progress(f"bulk {s}", int(op.get("objectCount") or 0), 0)
        )
        if operation["status"] != "COMPLETED":
            raise BulkFailed(stage, operation)
        lines[stage] = list(client.download_lines(operation.get("url")))
    customers = [customer_record(node) for node in lines["customers"]]
    products = _products_from_lines(lines["products"])
    orders = _orders_from_lines(lines["orders"])
    return _write(store, customers, products, orders, progress, started)


def import_changes(*, store: Store, progress: Progress | None = None, client: ShopifyClient | None = None
                   ) -> ShopifyImport:
    """What changed since the last successful run, through paginated queries."""
    progress = progress or _noop
    client = client or client_for(store)
    since = ShopifyConnection.objects.filter(store=store).values_list("imported_until", flat=True).first()
    if since is None:
        return import_full(store=store, progress=progress, client=client)
    started = timezone.now()
    query = f"updated_at:>'{since.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}'"
    customers = [customer_record(n) for n in client.paginate(CUSTOMERS_PAGE, {"query": query}, "customers")]
    progress("customers", len(customers), len(customers))
    products = [
        product_record(n, [variant_record(v) for v in n["variants"]["nodes"]])
        for n in client.paginate(PRODUCTS_PAGE, {"query": query}, "products", page_size=50)
    ]
    orders = [
        order_record(n, [line_item_record(i, p) for p, i in enumerate(n["lineItems"]["nodes"], 1)])
        for n in client.paginate(ORDERS_PAGE, {"query": query}, "orders", page_size=10)
    ]
    return _write(store, customers, products, orders, progress, started)


class BulkFailed(Exception):
    permanent = False

    def __init__(self, stage: str, operation: dict):
        self.operation = operation
        super().__init__(f"The bulk {stage} query ended {operation['status']} ({operation.get('errorCode') or '-'})")


def _write(store, customers, products, orders, progress, started) -> ShopifyImport:
    summary = records_import(store=store, customers=customers, products=products, orders=orders,
                             progress=progress, source="import")
    result = ShopifyImport(summary=summary, fetched={
        "customers": len(customers), "products": len(products), "orders": len(orders)})
    link = ShopifyConnection.objects.get(store=store)
    if "read_all_orders" not in link.scopes and link.scopes:
        result.warnings.append("Without the read_all_orders scope Shopify shows only the last 60 days of orders.")
    ShopifyConnection.objects.filter(pk=link.pk).update(imported_until=started - OVERLAP)
    return result


# --- GraphQL shapes → records ---------------------------------------------------------------------


def _dt(value: str | None) -> dt.datetime | None:
    return parse_datetime(value) if value else None


def _money(value: dict | None) -> Decimal:
    if not value:
        return Decimal("0")
    return Decimal(value["shopMoney"]["amount"])


def customer_record(node: dict) -> CustomerRecord:
    email_address = node.get("defaultEmailAddress") or {}
    phone = node.get("defaultPhoneNumber") or {}
    address = node.get("defaultAddress") or {}
    email = email_address.get("emailAddress") or node.get("email") or ""
    fields = {
        "first_name": node.get("firstName") or "",
        "last_name": node.get("lastName") or "",
        "email": email,
        "phone": phone.get("phoneNumber") or node.get("phone") or "",
        "email_marketing": email_address.get("marketingState") or "NOT_SUBSCRIBED",
        "sms_marketing": phone.get("marketingState") or "NOT_SUBSCRIBED",
        "country_code": address.get("countryCodeV2") or "",
        "province_code": address.get("provinceCode") or "",
        "city": address.get("city") or "",
        "zip": address.get("zip") or "",
        "state": node.get("state") or "",
        "note": node.get("note") or "",
        "shopify_created_at": _dt(node.get("createdAt")),
        "shopify_updated_at": _dt(node.get("updatedAt")),
    }
    return CustomerRecord(line=0, shopify_id=gid_id(node["id"]), email=email, fields=fields,
                          tags=list(node.get("tags") or []))


def variant_record(node: dict) -> VariantRecord:
    return VariantRecord(sku=node.get("sku") or "", title=node.get("title") or "",
                         price=Decimal(node["price"]) if node.get("price") else None, position=node.get("position") or 1)


def product_record(node: dict, variants: list[VariantRecord]) -> ProductRecord:
    return ProductRecord(
        line=0, handle=node["handle"],
        fields={"title": node["title"], "product_type": node.get("productType") or "", "vendor": node.get("vendor") or "",
                "category": (node.get("category") or {}).get("fullName") or "", "status": (node.get("status") or "").lower(),
                "shopify_id": gid_id(node["id"])},
        tags=list(node.get("tags") or []), variants=variants,
    )


def line_item_record(node: dict, position: int) -> LineItemRecord:
    return LineItemRecord(sku=node.get("sku") or "", title=node["title"], vendor=node.get("vendor") or "",
                          quantity=int(node.get("quantity") or 1), unit_price=_money(node.get("originalUnitPriceSet")),
                          discount=_money(node.get("totalDiscountSet")), position=position)


def _utm(visit: dict) -> dict[str, str]:
    utm = {k: v for k, v in ((visit.get("utmParameters") or {}).items()) if v}
    if not utm and visit.get("landingPage"):
        query = parse_qs(urlparse(visit["landingPage"]).query)
        utm = {k[4:]: v[0] for k, v in query.items() if k.startswith("utm_")}
    return utm


def order_record(node: dict, line_items: list[LineItemRecord]) -> OrderRecord:
    visit = ((node.get("customerJourneySummary") or {}).get("firstVisit")) or {}
    utm = _utm(visit)
    codes = node.get("discountCodes") or []
    fields = {
        "email": node.get("email") or "",
        "created_at": _dt(node["createdAt"]),
        "processed_at": _dt(node.get("processedAt")),
        "shopify_updated_at": _dt(node.get("updatedAt")),
        "currency": node.get("currencyCode") or "",
        "subtotal": _money(node.get("subtotalPriceSet")),
        "shipping": _money(node.get("totalShippingPriceSet")),
        "tax": _money(node.get("totalTaxSet")),
        "total": _money(node.get("totalPriceSet")),
        "total_discounts": _money(node.get("totalDiscountsSet")),
        "discount_code": codes[0] if codes else "",
        "refunded_amount": _money(node.get("totalRefundedSet")),
        "financial_status": (node.get("displayFinancialStatus") or "").lower(),
        "fulfillment_status": (node.get("displayFulfillmentStatus") or "").lower(),
        "cancelled_at": _dt(node.get("cancelledAt")),
        "test": bool(node.get("test")),
        "source_name": node.get("sourceName") or "",
        "tags": ", ".join(node.get("tags") or []),
        "landing_site": visit.get("landingPage") or "",
        "referring_site": visit.get("referrerUrl") or "",
    }
    for key in ("source", "medium", "campaign", "content", "term"):
        fields[f"utm_{key}"] = utm.get(key, "")
    return OrderRecord(line=0, name=node["name"], shopify_id=gid_id(node["id"]), email=fields["email"],
                       fields=fields, customer_fields={}, line_items=line_items,
                       customer_shopify_id=gid_id((node.get("customer") or {}).get("id")))


def _children(lines: Iterable[dict]) -> tuple[list[dict], dict[str, list[dict]]]:
    parents, children = [], {}
    for line in lines:
        parent = line.get("__parentId")
        if parent:
            children.setdefault(parent, []).append(line)
        else:
            parents.append(line)
    return parents, children


def _products_from_lines(lines: list[dict]) -> list[ProductRecord]:
    parents, children = _children(lines)
    return [product_record(p, [variant_record(v) for v in children.get(p["id"], [])]) for p in parents]


def _orders_from_lines(lines: list[dict]) -> list[OrderRecord]:
    parents, children = _children(lines)
    return [order_record(o, [line_item_record(i, n) for n, i in enumerate(children.get(o["id"], []), 1)])
            for o in parents]


CUSTOMERS_PAGE = f"""
query Customers($first: Int!, $after: String, $query: String) {{
  customers(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {{
    pageInfo {{ hasNextPage endCursor }}
    nodes {{ {CUSTOMER_FIELDS} }}
  }}
}}"""

PRODUCTS_PAGE = f"""
query Products($first: Int!, $after: String, $query: String) {{
  products(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {{
    pageInfo {{ hasNextPage endCursor }}
    nodes {{ {PRODUCT_FIELDS} variants(first: 20) {{ nodes {{ {VARIANT_FIELDS} }} }} }}
  }}
}}"""

ORDERS_PAGE = f"""
query Orders($first: Int!, $after: String, $query: String) {{
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {{
    pageInfo {{ hasNextPage endCursor }}
    nodes {{ {ORDER_FIELDS} lineItems(first: 20) {{ nodes {{ {LINE_ITEM_FIELDS} }} }} }}
  }}
}}"""
