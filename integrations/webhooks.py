"""Shopify webhooks: one endpoint, verified, de-duplicated, answered at once, processed in the background.

``POST /api/v1/webhooks/shopify/``:

1. The HMAC-SHA256 of the raw body (base64, ``X-Shopify-Hmac-Sha256``) is checked first against
   the shop's custom-app secret, then the public app's: a mismatch is 401 and nothing is stored.
2. ``X-Shopify-Event-Id`` (the same across Shopify's retries; else the webhook id) is unique per
   shop: a duplicate is answered 200 and dropped.
3. The delivery is stored and a task queued; the answer goes back well inside Shopify's 5 s.

``webhook_process`` (the task) applies the topic. Updates older than what we hold (by
``updated_at``) are ignored; an order event refreshes that customer's facts and memberships.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from ecpower.commerce.csv_import import records_import
from ecpower.commerce.models import (
    Customer,
    CustomerTag,
    CustomerTagEvent,
    Order,
    Store,
    TagEventAction,
)
from ecpower.commerce.services import customer_facts_refresh, store_data_delete
from ecpower.commerce.shopify_csv import CustomerRecord, LineItemRecord, OrderRecord
from integrations.models import AppliedTag, ShopifyConnection, WebhookDelivery, WebhookStatus
from integrations.shopify.client import gid_id
from integrations.shopify.connection import disconnect, webhook_secrets

logger = logging.getLogger(__name__)

ORDER_TOPICS = {"orders/create", "orders/updated", "orders/cancelled", "orders/paid", "orders/fulfilled"}
CUSTOMER_TOPICS = {"customers/create", "customers/update", "customers/enable", "customers/disable"}


def signature_valid(body: bytes, header: str, secrets: list[str]) -> bool:
    for secret in secrets:
        digest = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
        if header and hmac.compare_digest(digest, header):
            return True
    return False


@csrf_exempt
@require_POST
def shopify_webhook(request: HttpRequest) -> JsonResponse:
    body = request.body
    domain = request.headers.get("X-Shopify-Shop-Domain", "").strip().lower()
    topic = request.headers.get("X-Shopify-Topic", "").strip()
    store = Store.objects.filter(shopify_domain=domain).first() if domain else None
    if not signature_valid(body, request.headers.get("X-Shopify-Hmac-Sha256", ""), webhook_secrets(store)):
        return JsonResponse({"error": {"code": "invalid_signature", "message": "HMAC signature mismatch",
                                       "details": {}}}, status=401)
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return JsonResponse({"error": {"code": "invalid", "message": "The body is not JSON", "details": {}}},
                            status=400)
    event_id = (request.headers.get("X-Shopify-Event-Id") or request.headers.get("X-Shopify-Webhook-Id") or
                hashlib.sha256(body).hexdigest())
    try:
        with transaction.atomic():
            delivery = WebhookDelivery.objects.create(
                store=store, shop_domain=domain, topic=topic, event_id=event_id[:100],
                webhook_id=request.headers.get("X-Shopify-Webhook-Id", "")[:100],
                api_version=request.headers.get("X-Shopify-API-Version", "")[:10],
                triggered_at=parse_datetime(request.headers.get("X-Shopify-Triggered-At", "") or "") or None,
                payload=payload,
            )
    except IntegrityError:
        return JsonResponse({"status": "duplicate"})
    from django_q.tasks import async_task

    transaction.on_commit(lambda: async_task("integrations.webhooks.webhook_process", delivery.pk,
                                             task_name=f"webhook-{delivery.pk}"))
    return JsonResponse({"status": "accepted"})


# --- processing ---------------------------------------------------------------------------------


def webhook_process(delivery_id: int) -> str:
    """Apply one delivery; a processed one is left alone (safe to run twice)."""
    with transaction.atomic():
        delivery = (WebhookDelivery.objects.select_for_update(of=("self",)).select_related("store")
                    .filter(pk=delivery_id, status=WebhookStatus.RECEIVED).first())
        if delivery is None:
            return "already processed"
        try:
            with transaction.atomic():
                status, result = _apply(delivery)
        except Exception as exc:
            logger.exception("Webhook %s (%s) failed", delivery.pk, delivery.topic)
            status, result = WebhookStatus.FAILED, f"{type(exc).__name__}: {exc}"
        WebhookDelivery.objects.filter(pk=delivery.pk).update(status=status, result=result[:2000],
                                                              processed_at=timezone.now())
    return status


def _apply(delivery: WebhookDelivery) -> tuple[str, str]:
    store, topic, payload = delivery.store, delivery.topic, delivery.payload
    if store is None:
        return WebhookStatus.IGNORED, "unknown shop"
    if store.being_deleted:
        return WebhookStatus.IGNORED, "the store is being deleted"
    if topic in ORDER_TOPICS:
        return _order_event(store, payload)
    if topic in CUSTOMER_TOPICS:
        return _customer_event(store, payload)
    if topic == "customers/delete":
        deleted, _by_model = Customer.objects.filter(store=store, shopify_id=payload.get("id")).delete()
        return WebhookStatus.PROCESSED, f"deleted {deleted} rows"
    if topic in ("customer.tags_added", "customer.tags_removed"):
        return _tags_event(store, payload, added=topic.endswith("added"), at=delivery.triggered_at)
    if topic == "app/uninstalled":
        disconnect(store=store)
        return WebhookStatus.PROCESSED, "disconnected"
    if topic == "customers/redact":
        return _customer_redact(store, payload)
    if topic == "customers/data_request":
        return _customer_data_request(store, payload)
    if topic == "shop/redact":
        store_data_delete(store=store)
        ShopifyConnection.objects.filter(store=store).delete()
        return WebhookStatus.PROCESSED, "store data deleted"
    return WebhookStatus.IGNORED, f"topic {topic} is not handled"


def _stale(held: dt.datetime | None, incoming: dt.datetime | None) -> bool:
    return bool(held and incoming and incoming < held)


def _money(value) -> Decimal:
    try:
        return Decimal(str(value or "0"))
    except InvalidOperation:
        return Decimal("0")


def customer_record_from_rest(payload: dict) -> CustomerRecord:
    address = payload.get("default_address") or {}
    fields = {
        "first_name": payload.get("first_name") or "",
        "last_name": payload.get("last_name") or "",
        "email": payload.get("email") or "",
        "phone": payload.get("phone") or "",
        "country_code": (address.get("country_code") or "").upper(),
        "province_code": address.get("province_code") or "",
        "city": address.get("city") or "",
        "zip": address.get("zip") or "",
        "note": payload.get("note") or "",
        "state": (payload.get("state") or "").upper(),
        "shopify_created_at": parse_datetime(payload["created_at"]) if payload.get("created_at") else None,
        "shopify_updated_at": parse_datetime(payload["updated_at"]) if payload.get("updated_at") else None,
    }
    # Customer webhooks carry no tags from API 2025-01 (customer.tags_added/removed do); older ones do.
    tags = None
    if isinstance(payload.get("tags"), str):
        tags = [t.strip() for t in payload["tags"].split(",") if t.strip()]
    return CustomerRecord(line=0, shopify_id=payload.get("id"), email=fields["email"], fields=fields, tags=tags)


def order_record_from_rest(payload: dict) -> OrderRecord:
    landing = payload.get("landing_site") or ""
    utm = {k[4:]: v[0] for k, v in parse_qs(urlparse(landing).query).items() if k.startswith("utm_")}
    codes = [c.get("code", "") for c in payload.get("discount_codes") or []]
    shipping = ((payload.get("total_shipping_price_set") or {}).get("shop_money") or {}).get("amount")
    refunded = sum(
        (_money(t.get("amount")) for r in payload.get("refunds") or [] for t in r.get("transactions") or []
         if t.get("kind") == "refund"), Decimal("0"))
    fields = {
        "email": payload.get("email") or "",
        "created_at": parse_datetime(payload["created_at"]),
        "processed_at": parse_datetime(payload["processed_at"]) if payload.get("processed_at") else None,
        "shopify_updated_at": parse_datetime(payload["updated_at"]) if payload.get("updated_at") else None,
        "currency": payload.get("currency") or "",
        "subtotal": _money(payload.get("subtotal_price")),
        "shipping": _money(shipping),
        "tax": _money(payload.get("total_tax")),
        "total": _money(payload.get("total_price")),
        "total_discounts": _money(payload.get("total_discounts")),
        "discount_code": codes[0] if codes else "",
        "refunded_amount": refunded,
        "financial_status": payload.get("financial_status") or "",
        "fulfillment_status": payload.get("fulfillment_status") or "",
        "cancelled_at": parse_datetime(payload["cancelled_at"]) if payload.get("cancelled_at") else None,
        "test": bool(payload.get("test")),
        "source_name": payload.get("source_name") or "",
        "tags": payload.get("tags") or "",
        "landing_site": landing[:2000],
        "referring_site": (payload.get("referring_site") or "")[:2000],
    }
    for key in ("source", "medium", "campaign", "content", "term"):
        fields[f"utm_{key}"] = utm.get(key, "")
    items = [
        LineItemRecord(sku=i.get("sku") or "", title=i.get("title") or "", vendor=i.get("vendor") or "",
                       quantity=int(i.get("quantity") or 1), unit_price=_money(i.get("price")),
                       discount=_money(i.get("total_discount")), position=n)
        for n, i in enumerate(payload.get("line_items") or [], 1)
    ]
    customer = payload.get("customer") or {}
    return OrderRecord(line=0, name=payload.get("name") or f"#{payload['id']}", shopify_id=payload.get("id"),
                       email=fields["email"], fields=fields, customer_fields={}, line_items=items,
                       customer_shopify_id=customer.get("id"))


def _recompute_memberships(store: Store, customer_ids) -> dict:
    from segments.services import customers_segments_recompute

    return customers_segments_recompute(store=store, customer_ids=customer_ids)


def _order_event(store: Store, payload: dict) -> tuple[str, str]:
    record = order_record_from_rest(payload)
    held_at, before = Order.objects.filter(store=store, shopify_id=record.shopify_id).values_list(
        "shopify_updated_at", "customer_id").first() or (None, None)
    if _stale(held_at, record.fields["shopify_updated_at"]):
        return WebhookStatus.IGNORED, "older than the order we hold"
    customers = []
    customer = payload.get("customer")
    if customer and customer.get("id") and not Customer.objects.filter(store=store, shopify_id=customer["id"]).exists():
        customers = [customer_record_from_rest(customer)]
    summary = records_import(store=store, customers=customers, orders=[record], source="webhook")
    touched = set(summary.customer_ids)
    if before and before not in touched:  # the order moved to another customer: the old one's facts change too
        customer_facts_refresh(store=store, customer_ids=[before])
        touched.add(before)
    changes = _recompute_memberships(store, touched)
    return WebhookStatus.PROCESSED, f"order {record.name}; segments changed: {sorted(changes)}"


def _customer_event(store: Store, payload: dict) -> tuple[str, str]:
    record = customer_record_from_rest(payload)
    held = Customer.objects.filter(store=store, shopify_id=record.shopify_id).values_list(
        "shopify_updated_at", flat=True).first()
    if _stale(held, record.fields["shopify_updated_at"]):
        return WebhookStatus.IGNORED, "older than the customer we hold"
    summary = records_import(store=store, customers=[record], source="webhook")
    changes = _recompute_memberships(store, summary.customer_ids)
    return WebhookStatus.PROCESSED, f"customer {record.shopify_id}; segments changed: {sorted(changes)}"


def _tags_event(store: Store, payload: dict, *, added: bool, at: dt.datetime | None) -> tuple[str, str]:
    raw_id = payload.get("customerId") or payload.get("customer_id") or (payload.get("customer") or {}).get("id")
    customer_id = gid_id(raw_id) if isinstance(raw_id, str) else raw_id
    tags = payload.get("tags") or []
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    customer = Customer.objects.filter(store=store, shopify_id=customer_id).first()
    if customer is None:
        return WebhookStatus.IGNORED, f"unknown customer {customer_id}"
    occurred = parse_datetime(payload.get("occurredAt") or "") if payload.get("occurredAt") else None
    occurred = occurred or at or timezone.now()
    have = set(CustomerTag.objects.filter(customer=customer).values_list("name", flat=True))
    changed = [t for t in tags if (t not in have) == added]
    if added:
        CustomerTag.objects.bulk_create([CustomerTag(store=store, customer=customer, name=t) for t in changed],
                                        ignore_conflicts=True)
    else:
        CustomerTag.objects.filter(customer=customer, name__in=changed).delete()
        # Removed in Shopify by someone: our ledger no longer holds it either.
        AppliedTag.objects.filter(customer=customer, tag__in=changed).delete()
    CustomerTagEvent.objects.bulk_create([
        CustomerTagEvent(store=store, customer=customer, name=t, occurred_at=occurred, source="webhook",
                         action=TagEventAction.ADDED if added else TagEventAction.REMOVED) for t in changed])
    changes = _recompute_memberships(store, [customer.pk]) if changed else {}
    return WebhookStatus.PROCESSED, f"{len(changed)} tags {'added' if added else 'removed'}; segments changed: {sorted(changes)}"


def _customer_redact(store: Store, payload: dict) -> tuple[str, str]:
    """Personal data removed; the customer row stays anonymous so order totals and metrics hold."""
    shopify_id = (payload.get("customer") or {}).get("id")
    customer = Customer.objects.filter(store=store, shopify_id=shopify_id).first()
    orders = Order.objects.filter(store=store, shopify_id__in=payload.get("orders_to_redact") or [])
    if customer is not None:
        orders = orders | Order.objects.filter(store=store, customer=customer)
        Customer.objects.filter(pk=customer.pk).update(
            email="", phone="", first_name="", last_name="", city="", zip="", note="", province_code="",
            email_marketing="REDACTED", sms_marketing="REDACTED")
        CustomerTag.objects.filter(customer=customer).delete()
        CustomerTagEvent.objects.filter(customer=customer).delete()
    redacted = Order.objects.filter(pk__in=orders.values("pk")).update(email="", landing_site="", referring_site="")
    return WebhookStatus.PROCESSED, f"customer {shopify_id} anonymised, {redacted} orders redacted"


def customer_data_export(store: Store, customer: Customer | None, order_ids: list[int]) -> dict:
    """Everything we hold about one customer, as JSON-ready data."""
    from segments.selectors import customer_memberships

    orders = Order.objects.filter(store=store, shopify_id__in=order_ids)
    data: dict = {"store": store.shopify_domain, "generated_at": timezone.now().isoformat(), "customer": None}
    if customer is not None:
        orders = orders | Order.objects.filter(store=store, customer=customer)
        data["customer"] = {f: str(getattr(customer, f)) if getattr(customer, f) is not None else None for f in (
            "shopify_id", "email", "phone", "first_name", "last_name", "email_marketing", "sms_marketing",
            "country_code", "province_code", "city", "zip", "note", *Customer.FACT_FIELDS)}
        data["tags"] = sorted(customer.tags.values_list("name", flat=True))
        data["tag_history"] = [
            {"tag": e.name, "action": e.action, "at": e.occurred_at.isoformat(), "source": e.source}
            for e in customer.tag_events.order_by("occurred_at")]
        data["segments"] = sorted(customer_memberships(customer).values_list("segment__name", flat=True))
    data["orders"] = [
        {"name": o.name, "shopify_id": o.shopify_id, "created_at": o.created_at.isoformat(), "total": str(o.total),
         "currency": o.currency, "items": [{"title": i.title, "sku": i.sku, "quantity": i.quantity}
                                           for i in o.line_items.all()]}
        for o in Order.objects.filter(pk__in=orders.values("pk")).prefetch_related("line_items").order_by("created_at")]
    return data


def _customer_data_request(store: Store, payload: dict) -> tuple[str, str]:
    shopify_id = (payload.get("customer") or {}).get("id")
    customer = Customer.objects.filter(store=store, shopify_id=shopify_id).first()
    data = customer_data_export(store, customer, payload.get("orders_requested") or [])
    request_id = (payload.get("data_request") or {}).get("id") or timezone.now().strftime("%Y%m%d%H%M%S")
    folder = Path(settings.MEDIA_ROOT) / "data-requests" / str(store.pk)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"customer-{shopify_id}-request-{request_id}.json"
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2))
    if store.notification_email:
        send_mail(f"[{store.name}] Customer data request {request_id}",
                  f"Shopify asked for the data we hold about customer {shopify_id}.\n"
                  f"The export is at {path} (send it to the customer within 30 days).",
                  None, [store.notification_email])
    return WebhookStatus.PROCESSED, f"export written to {path}"
