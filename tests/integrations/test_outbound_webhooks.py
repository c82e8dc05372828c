"""Signed webhooks to a real receiver on loopback: signature recipe, membership events, job events,
retries with back-off logged per attempt, pausing after failures in a row, resuming."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from ecpower.commerce.services import customer_facts_refresh
from integrations.jobs import sync_job_finish
from integrations.models import SyncJob, SyncJobKind, WebhookAttempt, WebhookEndpoint, WebhookMessage
from integrations.outbound import (
    PAUSE_AFTER,
    RETRY_DELAYS,
    membership_messages_create,
    messages_drain,
    webhook_endpoint_create,
    webhook_endpoint_resume,
)
from segments.services import segment_create, segment_recompute
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db


class Receiver:
    """A partner's endpoint on 127.0.0.1: records every request; answers ``status`` (200 by default)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/ecpower"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def verify(secret: str, headers: dict, body: bytes) -> bool:
    """The documented recipe (docs/webhooks.md): HMAC-SHA256 of "<timestamp>.<body>", hex, constant-time."""
    expected = "sha256=" + hmac.new(secret.encode(), headers["X-Ecpower-Timestamp"].encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Ecpower-Signature"])


@pytest.fixture
def store():
    store = StoreFactory(notification_email="crm@example.jp")
    for n in range(3):
        customer = CustomerFactory(store=store, email=f"c{n}@example.jp")
        if n:
            OrderFactory(store=store, customer=customer)
    customer_facts_refresh(store=store)
    return store


def test_membership_changes_arrive_signed_once_each(store, receiver):
    endpoint, secret = webhook_endpoint_create(store=store, name="LINE tool", url=receiver.url,
                                               events=["segment.member_joined", "segment.member_left"])
    segment = segment_create(store=store, name="Buyers", slug="buyers", query="number_of_orders >= 1")
    segment_recompute(segment=segment)
    assert membership_messages_create(store=store) == 1
    assert membership_messages_create(store=store) == 0  # the cursor moved: nothing twice
    assert messages_drain(store=store) == {"delivered": 1, "retry": 0, "failed": 0, "skipped": 0}
    (request,) = receiver.requests
    assert verify(secret, request["headers"], request["body"])
    assert not verify("whsec_wrong", request["headers"], request["body"])
    payload = json.loads(request["body"])
    assert request["headers"]["X-Ecpower-Event"] == payload["event"] == "segment.member_joined"
    assert request["headers"]["X-Ecpower-Delivery"] == payload["id"]
    assert payload["data"]["segment"]["slug"] == "buyers"
    assert sorted(c["email"] for c in payload["data"]["customers"]) == ["c1@example.jp", "c2@example.jp"]
    assert WebhookMessage.objects.get().status == "delivered"


def test_job_finished_events_go_only_to_endpoints_that_want_them(store, receiver):
    webhook_endpoint_create(store=store, name="BI", url=receiver.url, events=["sync_job.finished"])
    webhook_endpoint_create(store=store, name="members only", url=receiver.url, events=["segment.member_left"])
    job = SyncJob.objects.create(store=store, kind=SyncJobKind.METRICS_BACKFILL)
    sync_job_finish(job, "succeeded", summary={}, notify=False)
    messages_drain(store=store)
    (request,) = receiver.requests
    assert json.loads(request["body"])["data"]["job"] == {
        "id": job.pk, "kind": "metrics_backfill", "status": "succeeded", "segment": None, "total": 0, "done": 0,
        "failed": 0, "error": "", "finished_at": json.loads(request["body"])["data"]["job"]["finished_at"]}


def test_failures_are_retried_with_back_off_then_given_up(store, receiver):
    webhook_endpoint_create(store=store, name="BI", url=receiver.url, events=["sync_job.finished"])
    sync_job_finish(SyncJob.objects.create(store=store, kind=SyncJobKind.METRICS_BACKFILL), "failed", notify=False)
    receiver.status = 500
    now = timezone.now()
    assert messages_drain(store=store, now=now)["retry"] == 1
    message = WebhookMessage.objects.get()
    assert message.attempts == 1 and message.next_attempt_at == now + RETRY_DELAYS[0]
    assert messages_drain(store=store, now=now + dt.timedelta(seconds=30))["retry"] == 0  # not due yet
    for delay in RETRY_DELAYS:
        now += delay
        messages_drain(store=store, now=now)
    message.refresh_from_db()
    assert (message.status, message.attempts) == ("failed", len(RETRY_DELAYS) + 1)
    attempts = WebhookAttempt.objects.filter(message=message)
    assert attempts.count() == len(RETRY_DELAYS) + 1 and {a.status_code for a in attempts} == {500}
    assert len({r["headers"]["X-Ecpower-Delivery"] for r in receiver.requests}) == 1  # the same delivery id


def test_an_endpoint_that_keeps_failing_is_paused_reported_and_resumed(store, receiver):
    endpoint, _secret = webhook_endpoint_create(store=store, name="BI", url=receiver.url,
                                                events=["sync_job.finished"])
    for _ in range(PAUSE_AFTER):
        sync_job_finish(SyncJob.objects.create(store=store, kind=SyncJobKind.METRICS_BACKFILL), "succeeded",
                        notify=False)
    receiver.status = 503
    messages_drain(store=store)
    endpoint.refresh_from_db()
    assert endpoint.is_paused and "20 failed attempts in a row" in endpoint.pause_reason
    assert len(mail.outbox) == 1 and "Webhook endpoint paused: BI" in mail.outbox[0].subject
    sync_job_finish(SyncJob.objects.create(store=store, kind=SyncJobKind.METRICS_BACKFILL), "succeeded",
                    notify=False)
    sent = len(receiver.requests)
    assert messages_drain(store=store, now=timezone.now() + dt.timedelta(days=1))["delivered"] == 0
    assert len(receiver.requests) == sent  # nothing goes to a paused endpoint
    receiver.status = 200
    webhook_endpoint_resume(endpoint=endpoint)
    assert messages_drain(store=store)["delivered"] == PAUSE_AFTER + 1  # the backlog, in order


def test_endpoints_need_https_and_known_events(store):
    for url in ("http://partner.example.jp/hook", "ftp://127.0.0.1/x", "https://"):
        with pytest.raises(ValidationError):
            webhook_endpoint_create(store=store, name="x", url=url, events=["sync_job.finished"])
    with pytest.raises(ValidationError, match="segment.nope"):
        webhook_endpoint_create(store=store, name="x", url="https://partner.example.jp/hook", events=["segment.nope"])
    endpoint, secret = webhook_endpoint_create(store=store, name="x", url="https://partner.example.jp/hook",
                                               events=["sync_job.finished"])
    assert secret.startswith("whsec_") and WebhookEndpoint.objects.get().secret == secret


def test_the_daily_run_pushes_membership_changes_as_its_partner_step(store, receiver):
    from metrics.models import PipelineRun
    from metrics.pipeline import pipeline_run

    webhook_endpoint_create(store=store, name="LINE tool", url=receiver.url, events=["segment.member_joined"])
    segment_create(store=store, name="Buyers", slug="buyers", query="number_of_orders >= 1")
    run = PipelineRun.objects.create(store=store, date=dt.date.today())
    assert pipeline_run(run.pk) == "succeeded"
    run.refresh_from_db()
    assert run.summary["partners"]["status"] == "succeeded"
    assert [json.loads(r["body"])["event"] for r in receiver.requests] == ["segment.member_joined"]


def test_partners_register_endpoints_over_the_api_and_see_the_secret_once(store, receiver):
    from django.urls import reverse
    from rest_framework.test import APIClient

    from ecpower.commerce.access import api_key_create
    from ecpower.commerce.models import ApiKeyScope

    _key, raw = api_key_create(store=store, name="tool", scope=ApiKeyScope.READ_WRITE)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    created = client.post(reverse("webhook-endpoint-list"), {"store": store.pk, "name": "BI", "url": receiver.url,
                                                             "events": ["sync_job.finished"]}, format="json")
    assert created.status_code == 201 and created.json()["secret"].startswith("whsec_")
    detail = client.get(reverse("webhook-endpoint-detail", args=[created.json()["id"]])).json()
    assert "secret" not in detail and detail["events"] == ["sync_job.finished"]
    bad = client.post(reverse("webhook-endpoint-list"), {"store": store.pk, "name": "x", "url": "http://example.jp/",
                                                         "events": ["sync_job.finished"]}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["details"][0]["field"] == "url"
    sync_job_finish(SyncJob.objects.create(store=store, kind=SyncJobKind.METRICS_BACKFILL), "succeeded",
                    notify=False)
    messages_drain(store=store)
    log = client.get(reverse("webhook-endpoint-messages", args=[created.json()["id"]])).json()["results"]
    assert [(m["event"], m["status"]) for m in log] == [("sync_job.finished", "delivered")]
    assert client.post(reverse("webhook-endpoint-resume", args=[created.json()["id"]])).status_code == 200
