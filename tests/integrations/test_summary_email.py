"""The completion email, once through a real SMTP server on loopback (aiosmtpd)."""

import socket

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink

from integrations.jobs import sync_job_finish, sync_job_notify
from integrations.models import SyncJob, SyncJobKind, SyncJobStatus


class Inbox(Sink):
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, envelope.rcpt_tos, envelope.content.decode("utf-8", "replace")))
        return "250 OK"


@pytest.fixture
def smtp(settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_USE_TLS = "127.0.0.1", port, False
    yield inbox
    controller.stop()


def test_the_summary_goes_out_over_smtp_once(store, smtp):
    store.notification_email = "crm@example.jp"
    store.save()
    job = SyncJob.objects.create(store=store, kind=SyncJobKind.IMPORT_CHANGES)
    sync_job_finish(job, SyncJobStatus.SUCCEEDED, summary={"customers": {"created": 3, "updated": 1}})
    assert sync_job_notify(job.pk) is False  # already sent: never twice
    assert len(smtp.messages) == 1
    sender, recipients, content = smtp.messages[0]
    assert recipients == ["crm@example.jp"]
    assert "created 3" in content and f"/admin/integrations/syncjob/{job.pk}/change/" in content


def test_no_address_no_mail(store, mailoutbox):
    job = SyncJob.objects.create(store=store, kind=SyncJobKind.IMPORT_CHANGES)
    sync_job_finish(job, SyncJobStatus.FAILED, error="Shopify refused the token")
    assert mailoutbox == []
