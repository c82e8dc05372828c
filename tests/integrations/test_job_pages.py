"""The job page renders every kind of job, with its summary and live progress JSON."""

from __future__ import annotations

import pytest
from django.urls import reverse

from integrations.models import SyncJob, SyncJobKind
from tests.factories import StoreFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("kind", [k for k, _label in SyncJobKind.choices])
def test_every_kind_of_job_has_a_page(staff_client, kind):
    job = SyncJob.objects.create(store=StoreFactory(), kind=kind, total=10, done=4, summary={"days": 3})
    page = staff_client.get(reverse("admin:integrations_syncjob_change", args=[job.pk]))
    assert page.status_code == 200 and str(job.get_kind_display()) in page.content.decode()
    assert staff_client.get(reverse("admin:integrations_syncjob_changelist")).status_code == 200
