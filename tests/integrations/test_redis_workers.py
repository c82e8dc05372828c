"""Real django-q2 workers on the real Redis broker: a tag sync survives SIGKILL of its worker.

Runs on PostgreSQL only (the workers are separate processes and must see the test database).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from ecpower.commerce.models import Customer
from integrations.models import SyncJob, SyncJobKind, SyncJobStatus
from integrations.shopify.emulator.state import Plan
from integrations.shopify.importer import import_full
from segments.services import segment_create, segment_recompute

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = 9


def redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), 1).close()
        return True
    except OSError:
        return False


def redis_worker_env(redis_db: int, **extra: str) -> dict:
    """The environment of a ``manage.py`` subprocess on the test database and a flushed Redis database.

    Skips unless PostgreSQL (the workers must see the test database) and Redis are there.
    """
    if connection.vendor != "postgresql" or not redis_up():
        pytest.skip("needs PostgreSQL and Redis on 127.0.0.1 (CI has both)")
    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=redis_db).flushdb()
    db = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "ecpower.settings",
        "ECPOWER_ENV_FILE": os.devnull,
        "DJANGO_DEBUG": "1",
        "SECRET_KEY": os.environ["SECRET_KEY"],
        "ECPOWER_ENCRYPTION_KEYS": ",".join(settings.ENCRYPTION_KEYS),
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "Q_SYNC": "0",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


@pytest.fixture
def worker_env(emulator):
    return redis_worker_env(REDIS_DB, SHOPIFY_ADMIN_URL=emulator.admin_url(), ECPOWER_TAG_SYNC_BULK_THRESHOLD="100000",
                            Q_WORKERS="2")


LOG = Path(os.environ.get("ECPOWER_WORKER_LOG", "/tmp/ecpower-test-workers.log"))


def manage(env, *args):
    with LOG.open("a") as log:  # a file, not a pipe: a full pipe would block the worker
        return subprocess.Popen([sys.executable, "manage.py", *args], cwd=ROOT, env=env, start_new_session=True,
                                stdout=log, stderr=subprocess.STDOUT)


def stop(process, sig=signal.SIGTERM) -> None:
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def enqueue(env, job_id: int) -> None:
    code = ("from django_q.tasks import async_task; "
            f"async_task('integrations.jobs.sync_job_run', {job_id}, hook='integrations.jobs.sync_job_hook')")
    assert manage(env, "shell", "-c", code).wait(timeout=60) == 0


def wait_for(predicate, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_sigkilled_worker_leaves_a_ledger_the_next_worker_finishes(connected_store, emulator, worker_env):
    shop = emulator.shop
    for n in range(1200):
        shop.add_customer(email=f"w{n}@example.jp", tags=["LINE連携"] if n % 2 else [])
    import_full(store=connected_store)
    segment = segment_create(store=connected_store, name="LINE", query="customer_tags CONTAINS 'LINE連携'",
                             shopify_tag="ecp-line")
    segment_recompute(segment=segment)
    shop.plan = shop.bucket.plan = Plan(maximum=300.0, restore_rate=400.0)  # about 15 s for 600 tags
    job = SyncJob.objects.create(store=connected_store, segment=segment, kind=SyncJobKind.TAG_SYNC)

    enqueue(worker_env, job.pk)
    first = manage(worker_env, "qcluster")
    try:
        wait_for(lambda: SyncJob.objects.get(pk=job.pk).done >= 100)
    finally:
        stop(first, signal.SIGKILL)
    killed = SyncJob.objects.get(pk=job.pk)
    assert killed.status == SyncJobStatus.RUNNING and 100 <= killed.done < 600

    # Ten minutes later the job's heartbeat is stale; the next run (a retry, or tomorrow's) resumes it.
    SyncJob.objects.filter(pk=job.pk).update(heartbeat_at=None)
    shop.plan = shop.bucket.plan = Plan(maximum=20000.0, restore_rate=1000.0)
    enqueue(worker_env, job.pk)
    second = manage(worker_env, "qcluster")
    try:
        finished = wait_for(lambda: SyncJob.objects.filter(pk=job.pk, status__in=["succeeded", "partial", "failed"])
                            .first())
    finally:
        stop(second)
    assert finished.status == SyncJobStatus.SUCCEEDED, finished.error
    assert (finished.done, finished.total, finished.failed) == (600, 600, 0)
    wanted = set(Customer.objects.filter(memberships__segment=segment).values_list("shopify_id", flat=True))
    assert {cid for cid, c in shop.customers.items() if "ecp-line" in c["tags"]} == wanted
