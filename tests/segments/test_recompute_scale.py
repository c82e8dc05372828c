"""The benchmark's 20 segments on a generated store: statements per segment and members, checked.

The benchmark (tests/bench/suite.py) times them at up to 1M customers; here the same
segments run on a small demo store so every `make test` proves they stay set-based (a bounded
number of SQL statements whatever the size) and agree with the plain-Python oracle.
"""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext

from ecpower.commerce.demo import generate_demo_store
from segments.models import Membership
from segments.selectors import store_today
from segments.services import segment_create, segment_recompute
from tests.bench.reference import SEGMENTS
from tests.segments.oracle import Oracle

MAX_STATEMENTS_PER_SEGMENT = 14


def test_twenty_segments_are_set_based_and_correct(store):
    today = store_today(store)
    generate_demo_store(store=store, customers=1500, seed=7, until=today)
    counts = []
    for slug, query in SEGMENTS.items():
        segment = segment_create(store=store, name=slug, slug=slug, query=query)
        with CaptureQueriesContext(connection) as queries:
            result = segment_recompute(segment=segment)
        counts.append(len(queries.captured_queries))
        oracle = Oracle(store, as_of=today, today=today)  # reloaded: later segments read earlier memberships
        stored = set(Membership.objects.filter(segment=segment).values_list("customer_id", flat=True))
        assert stored == oracle.member_ids(segment.rule), slug
        assert result.members == len(stored)
    assert max(counts) <= MAX_STATEMENTS_PER_SEGMENT, counts
    assert sum(1 for slug in SEGMENTS if Membership.objects.filter(segment__slug=slug).exists()) >= 18
