"""Schemathesis against the live OpenAPI document: generated requests to every operation, a bounded
number each, with a read-write key of a small store. No 5xx, and every documented response matches
its schema. Part of `make test`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from django.core.cache import cache
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from ecpower.commerce.access import api_key_create
from ecpower.commerce.models import ApiKeyScope
from ecpower.commerce.services import customer_facts_refresh
from segments.services import segment_create, segment_recompute
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

EXAMPLES = 12


@pytest.fixture
def api_key(db, settings):
    settings.ALLOWED_HOSTS = ["localhost", "testserver"]  # schemathesis calls the WSGI app as localhost
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK,
                               "DEFAULT_THROTTLE_RATES": {"api": "100000/min"}}
    cache.clear()
    store = StoreFactory(shopify_domain="fuzz.myshopify.com")
    customer = CustomerFactory(store=store)
    OrderFactory(store=store, customer=customer)
    customer_facts_refresh(store=store)
    segment = segment_create(store=store, name="Buyers", slug="buyers", query="number_of_orders >= 1")
    segment_recompute(segment=segment)
    _key, raw = api_key_create(store=store, name="fuzz", scope=ApiKeyScope.READ_WRITE)
    return raw


@pytest.fixture
def keep_test_connection():
    """Like Django's test client: the app must not close the test's database connection after each request."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def test_the_api_answers_every_generated_request_within_its_schema(api_key, keep_test_connection):
    from ecpower.wsgi import application

    schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", application)
    headers = {"Authorization": f"Bearer {api_key}"}
    failures, operations = {}, 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)  # the same requests every run: CI never flakes on a new draw
        def call(case):
            case.call_and_validate(headers=headers, checks=[not_a_server_error, response_schema_conformance,
                                                            content_type_conformance])

        try:
            call()
        except (Exception, BaseExceptionGroup) as exc:  # collected: one run reports every failing operation
            failures[operation.label] = str(exc)[:1500]
    if failures:  # pragma: no cover (the report of a failing run)
        Path("/tmp/schemathesis-failures.txt").write_text("\n\n".join(f"{k}:\n{v}" for k, v in failures.items()))
    assert operations > 40
    assert not failures, "\n\n".join(f"{label}:\n{error}" for label, error in failures.items())
