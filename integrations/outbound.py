"""Signed webhooks to partner tools: register, emit, deliver with back-off, pause what keeps failing.

A partner registers an endpoint (``webhook_endpoint_create``: the signing secret is returned once)
and picks events. Events become ``WebhookMessage`` rows (an outbox), one per endpoint:

* ``segment.member_joined`` / ``segment.member_left``: read from the join/leave history
  (``MembershipEvent``) after each endpoint's ``membership_cursor``, in chunks of
  ``MEMBERS_PER_MESSAGE`` customers per segment, the cursor moving in the same transaction, so a
  crash neither loses nor repeats a join (``membership_messages_create``; the daily run's partner
  step and the drain schedule call it);
* ``sync_job.finished``: when a job finishes (``job_finished_emit``).

``messages_drain`` sends what is due. Each request is a POST of the JSON payload with::

    X-Ecpower-Event: segment.member_joined
    X-Ecpower-Delivery: <uuid, the same on every retry>
    X-Ecpower-Timestamp: <unix seconds>
    X-Ecpower-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

A 2xx answer delivers it. Anything else (or a timeout) is logged as a ``WebhookAttempt`` and retried
after ``RETRY_DELAYS``; after the last one the message is given up. ``PAUSE_AFTER`` failed attempts
in a row pause the endpoint (nothing more is sent) and email the store; resuming it sends the
backlog. docs/webhooks.md has the verification recipe.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
import uuid
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from ecpower.commerce.models import Store
from integrations.http import shared_session
from integrations.models import (
    DeliveryStatus,
    OutboundEvent,
    SyncJob,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)

logger = logging.getLogger(__name__)

RETRY_DELAYS = (
    dt.timedelta(minutes=1), dt.timedelta(minutes=5), dt.timedelta(minutes=30), dt.timedelta(hours=2),
    dt.timedelta(hours=6), dt.timedelta(hours=12),
)  # then the message is given up: 7 attempts over about 21 hours
PAUSE_AFTER = 20
MEMBERS_PER_MESSAGE = 500
DRAIN_BATCH = 200
TIMEOUT = (5.0, 15.0)


# --- endpoints ------------------------------------------------------------------------------------------


def check_url(url: str) -> None:
    """HTTPS only; plain http is accepted for loopback addresses (local tools and tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    host = (parts.hostname or "").lower()
    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if parts.scheme == "http" and loopback:
        return
    raise ValidationError({"url": [_("Use an https:// address (http only for 127.0.0.1 or localhost).")]})


def check_events(events) -> list[str]:
    if not isinstance(events, list) or not events:
        raise ValidationError({"events": [_("Choose at least one event.")]})
    unknown = [e for e in events if e not in OutboundEvent.values]
    if unknown:
        raise ValidationError({"events": [_("Unknown events %(events)s; choose from %(known)s.")
                                          % {"events": ", ".join(map(str, unknown)),
                                             "known": ", ".join(OutboundEvent.values)}]})
    return sorted(set(events))


def webhook_endpoint_create(*, store: Store, name: str, url: str, events: list[str]) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret (shown once). Membership events start from now."""
    from segments.models import MembershipEvent

    check_url(url)
    events = check_events(events)
    secret = f"whsec_{secrets.token_urlsafe(32)}"
    latest = MembershipEvent.objects.filter(store=store).order_by("-id").values_list("id", flat=True).first() or 0
    endpoint = WebhookEndpoint.objects.create(store=store, name=name, url=url, events=events, secret=secret,
                                              membership_cursor=latest)
    return endpoint, secret


def webhook_endpoint_resume(*, endpoint: WebhookEndpoint) -> None:
    """Start sending again, backlog first (given-up messages stay given up)."""
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(paused_at=None, pause_reason="", consecutive_failures=0)
    WebhookMessage.objects.filter(endpoint=endpoint, status=DeliveryStatus.PENDING).update(
        next_attempt_at=timezone.now())


# --- emitting --------------------------------------------------------------------------------------------


def _message(endpoint: WebhookEndpoint, event: str, data: dict) -> WebhookMessage:
    delivery = uuid.uuid4()
    payload = {"id": str(delivery), "event": event, "created_at": timezone.now().isoformat(),
               "store": {"id": endpoint.store_id, "shopify_domain": endpoint.store.shopify_domain}, "data": data}
    return WebhookMessage(store_id=endpoint.store_id, endpoint=endpoint, event=event, delivery_id=delivery,
                          payload=payload, next_attempt_at=timezone.now())


def _subscribed(store: Store, event: str):
    return [e for e in WebhookEndpoint.objects.filter(store=store).select_related("store") if event in e.events]


def job_finished_emit(job: SyncJob) -> int:
    """A ``sync_job.finished`` message to every endpoint of the store that wants it."""
    endpoints = _subscribed(job.store, OutboundEvent.JOB_FINISHED)
    data = {"job": {"id": job.pk, "kind": job.kind, "status": job.status, "segment": job.segment_id,
                    "total": job.total, "done": job.done, "failed": job.failed, "error": job.error,
                    "finished_at": job.finished_at.isoformat() if job.finished_at else None}}
    WebhookMessage.objects.bulk_create([_message(e, OutboundEvent.JOB_FINISHED, data) for e in endpoints])
    return len(endpoints)


def membership_messages_create(*, store: Store, limit: int = 50_000) -> int:
    """Turn joins and leaves recorded since each endpoint's cursor into messages; returns how many."""
    from segments.models import MembershipEvent, MembershipEventKind

    made = 0
    kinds = {OutboundEvent.MEMBER_JOINED: MembershipEventKind.JOINED, OutboundEvent.MEMBER_LEFT: MembershipEventKind.LEFT}
    for endpoint in WebhookEndpoint.objects.filter(store=store).select_related("store"):
        wanted = [kinds[e] for e in endpoint.events if e in kinds]
        if not wanted:
            continue
        with transaction.atomic():
            locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
            rows = list(MembershipEvent.objects.filter(store=store, id__gt=locked.membership_cursor)
                        .order_by("id").values_list("id", "segment_id", "segment__slug", "segment__name", "kind",
                                                    "date", "customer_id", "customer__shopify_id",
                                                    "customer__email")[:limit])
            if not rows:
                continue
            groups: dict[tuple, list] = {}
            for _id, segment_id, slug, name, kind, date, customer_id, shopify_id, email in rows:
                if kind in wanted:
                    groups.setdefault((segment_id, slug, name, kind, date), []).append(
                        {"id": customer_id, "shopify_id": shopify_id, "email": email})
            messages = []
            for (segment_id, slug, name, kind, date), customers in groups.items():
                event = OutboundEvent.MEMBER_JOINED if kind == MembershipEventKind.JOINED else OutboundEvent.MEMBER_LEFT
                for start in range(0, len(customers), MEMBERS_PER_MESSAGE):
                    messages.append(_message(locked, event, {
                        "segment": {"id": segment_id, "slug": slug, "name": name}, "date": date.isoformat(),
                        "customers": customers[start:start + MEMBERS_PER_MESSAGE]}))
            WebhookMessage.objects.bulk_create(messages)
            WebhookEndpoint.objects.filter(pk=locked.pk).update(membership_cursor=rows[-1][0])
            made += len(messages)
    return made


# --- delivering --------------------------------------------------------------------------------------------


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256 of ``<timestamp>.<body>`` with the endpoint's secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def messages_drain(*, store: Store | None = None, now: dt.datetime | None = None) -> dict[str, int]:
    """Send every due message of active endpoints (of one store, or all); returns counts by outcome."""
    now = now or timezone.now()
    due = WebhookMessage.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now,
                                        endpoint__paused_at__isnull=True)
    if store is not None:
        due = due.filter(store=store)
    counts = {"delivered": 0, "retry": 0, "failed": 0, "skipped": 0}
    for message_id in list(due.order_by("id").values_list("id", flat=True)[:DRAIN_BATCH]):
        counts[message_send(message_id, now=now)] += 1
    return counts


def _claim(message_id: int, now: dt.datetime) -> WebhookMessage | None:
    """Take a due message (pushing its next attempt out first), so two drains never send it at once."""
    claimed = WebhookMessage.objects.filter(
        pk=message_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now, endpoint__paused_at__isnull=True,
    ).update(next_attempt_at=now + dt.timedelta(minutes=10))
    if not claimed:
        return None
    return WebhookMessage.objects.select_related("endpoint", "endpoint__store").get(pk=message_id)


def message_send(message_id: int, *, now: dt.datetime | None = None) -> str:
    """One attempt: "delivered", "retry", "failed" (given up) or "skipped" (not due, paused, taken)."""
    now = now or timezone.now()
    message = _claim(message_id, now)
    if message is None:
        return "skipped"
    endpoint = message.endpoint
    body = json.dumps(message.payload, ensure_ascii=False, separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Ecpower-Event": message.event,
               "X-Ecpower-Delivery": str(message.delivery_id), "X-Ecpower-Timestamp": timestamp,
               "X-Ecpower-Signature": signature(endpoint.secret, timestamp, body)}
    started = time.monotonic()
    status_code, error = None, ""
    try:
        response = shared_session().post(endpoint.url, data=body, headers=headers, timeout=TIMEOUT,
                                         allow_redirects=False)
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}: {response.text[:300]}"
    except requests.RequestException as exc:  # a network failure: an attempt that failed, logged and retried
        error = f"{type(exc).__name__}: {exc}"[:1000]
    duration = int((time.monotonic() - started) * 1000)
    WebhookAttempt.objects.create(message=message, status_code=status_code, error=error, duration_ms=duration)
    attempts = message.attempts + 1
    if not error:
        WebhookMessage.objects.filter(pk=message.pk).update(status=DeliveryStatus.DELIVERED, attempts=attempts,
                                                            delivered_at=timezone.now(), last_error="")
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=0)
        return "delivered"
    gave_up = attempts > len(RETRY_DELAYS)
    WebhookMessage.objects.filter(pk=message.pk).update(
        attempts=attempts, last_error=error,
        status=DeliveryStatus.FAILED if gave_up else DeliveryStatus.PENDING,
        next_attempt_at=now if gave_up else now + RETRY_DELAYS[attempts - 1])
    failures = endpoint.consecutive_failures + 1
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=failures)
    if failures >= PAUSE_AFTER:
        endpoint_pause(endpoint, _("%(n)d failed attempts in a row; last: %(error)s") % {"n": failures, "error": error})
    return "failed" if gave_up else "retry"


def endpoint_pause(endpoint: WebhookEndpoint, reason: str) -> bool:
    """Pause the endpoint and email the store once; False if it was paused already."""
    if not WebhookEndpoint.objects.filter(pk=endpoint.pk, paused_at__isnull=True).update(
            paused_at=timezone.now(), pause_reason=reason[:2000]):
        return False
    logger.warning("Webhook endpoint %s of %s paused: %s", endpoint.pk, endpoint.store, reason)
    store = endpoint.store
    if store.notification_email:
        with translation.override(settings.LANGUAGE_CODE):
            subject = _("[%(store)s] Webhook endpoint paused: %(name)s") % {"store": store.name, "name": endpoint.name}
            body = "\n".join([subject, "", endpoint.url, reason, "",
                              _("Fix the receiver, then resume the endpoint in the admin; waiting messages are "
                                "sent then.")])
        send_mail(subject, body, None, [store.notification_email])
    return True


def outbound_drain_all() -> dict[str, int]:
    """Schedule entry (every minute): membership messages of every store with endpoints, then sending."""
    for store in Store.objects.live().filter(webhook_endpoints__isnull=False).distinct():
        membership_messages_create(store=store)
    return messages_drain()


def store_outbound_push(store: Store) -> dict:
    """The daily run's partner step for webhooks: queue membership messages, send what is due."""
    active = WebhookEndpoint.objects.filter(store=store)
    if not active.exists():
        return {}
    made = membership_messages_create(store=store)
    counts = messages_drain(store=store)
    paused = list(active.filter(~Q(paused_at=None)).values_list("name", flat=True))
    return {"messages": made, **counts, "paused": paused}
