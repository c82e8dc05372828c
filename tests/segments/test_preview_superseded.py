"""A preview the builder no longer waits for is cancelled by the next one from the same page."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse

from segments.superseding import PreviewSuperseded, preview_key, superseding
from tests.factories import CustomerFactory, StoreFactory

postgresql_only = pytest.mark.skipif(connection.vendor != "postgresql",
                                     reason="statements are cancelled on PostgreSQL only")


def running(key: str, *, within: float = 20) -> None:
    """Wait until a statement marked with ``key`` runs on another connection."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # a transaction sees the activity it first saw
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
                           [f"/* ecpower preview {key} */%"])
            if cursor.fetchone()[0]:
                return
        time.sleep(0.05)
    raise AssertionError(f"no statement of preview {key} started")


def on_own_connection(function, *args):
    def call():
        try:
            function(*args)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def builder_pages(user, **fields):
    """The builder's preview requests of ``user`` (``ask(name)`` posts ``fields`` with page "tab1" on the thread
    that calls it), and their answers by name."""
    answers = {}

    def ask(name: str) -> None:
        client = Client()
        client.force_login(user)
        answers[name] = client.post(reverse("admin:segments_conditionsegment_preview"),
                                    {"page": "tab1", "exact": "1", **fields})

    return ask, answers


def test_a_page_is_named_by_its_user_and_a_token_without_wildcards():
    assert preview_key(7, "k3x9-lq2") == "7-k3x9-lq2"
    for unusable in ("", "a_b", "50%", "*/ DROP", "x" * 41):
        assert preview_key(7, unusable) is None


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_newer_preview_cancels_the_one_still_running_for_its_page_and_no_other():
    outcome: dict[str, str] = {}

    def preview(key: str, seconds: float, name: str) -> None:
        try:
            with superseding(key), connection.cursor() as cursor:
                cursor.execute("SELECT pg_sleep(%s)", [seconds])
            outcome[name] = "finished"
        except PreviewSuperseded:
            outcome[name] = "superseded"

    old = on_own_connection(preview, "7-page", 60, "old")
    other = on_own_connection(preview, "7-other-page", 1, "other")
    running("7-page"), running("7-other-page")

    with superseding("7-page"):
        pass

    old.join(30), other.join(30)
    assert outcome == {"old": "superseded", "other": "finished"}


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_the_builder_answers_superseded_to_the_request_the_same_page_replaced(django_user_model):
    store = StoreFactory(shopify_domain="busy.myshopify.com")
    CustomerFactory.create_batch(3, store=store)
    user = django_user_model.objects.create_superuser("hanako", "h@example.jp", "pw")
    ask, answers = builder_pages(user, store=store.pk, query="number_of_orders >= 0")

    # The customers are locked, so the first preview waits (as a long count would run) until the second
    # arrives from the same page.
    second = the_second_supersedes_the_first(ask, answers, f"{user.pk}-tab1", locked="commerce_customer")
    assert (second.status_code, second.json()["count"]) == (200, 3)


def the_second_supersedes_the_first(ask, answers, key: str, *, locked: str):
    """With ``locked`` locked, so the first preview waits as a long count would, a second one from the same page
    arrives: the first must answer "superseded" at once. Returns the second's answer, once the lock is gone."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {locked} IN ACCESS EXCLUSIVE MODE")
        first = on_own_connection(ask, "first")
        running(key)
        second = on_own_connection(ask, "second")
        first.join(30)
        assert not first.is_alive(), "the first preview (or a part of it) was left running"
        assert (answers["first"].status_code, answers["first"].json()) == (409, {"ok": False, "superseded": True})
    second.join(30)
    return answers["second"]
