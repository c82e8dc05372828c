"""The performance suite at 10,000 customers, in every `make test`: correctness only, never time.

The same code as `make bench` (tests/bench/suite.py) runs each step; what is asserted is what the
benchmark's figures rely on: DuckDB's hand-written SQL and the project agree on all 20 segments,
the naive per-customer evaluation agrees with stored membership, incremental updates after 100 and
10,000 new orders equal a full recompute, the day's snapshots and the tag diff are complete, the
builder's estimate from a sample lands near the exact count.
"""

from __future__ import annotations

import pytest

from tests.bench import suite
from tests.bench.reference import SEGMENTS


@pytest.mark.slow
@pytest.mark.django_db(transaction=False)
def test_suite_at_ten_thousand_customers_is_correct(tmp_path, capsys, settings):
    settings.PREVIEW_ESTIMATE_SAMPLE = 2_000  # the builder's estimate from a fifth of the store
    report = suite.run(customers=10_000, seed=3, sample=40, tag_changes=5_000, directory=tmp_path)

    assert report.problems == []
    checks = {name: value["ok"] for name, value in report.checks.items() if isinstance(value, dict) and "ok" in value}
    assert checks == {
        "duckdb_equals_project": True, "naive_sample_equals_membership": True,
        "incremental_100_facts_equal_full": True, "incremental_100_members_equal_full": True,
        "incremental_10000_facts_equal_full": True, "incremental_10000_members_equal_full": True,
        "snapshots_one_day": True, "tag_diff_size": True, "daily_recompute_equals_full": True,
        "preview_estimate_products_near_exact": True, "daily_snapshots": True, "daily_tag_diff_size": True,
    }
    members = report.checks["members"]
    assert set(members) == set(SEGMENTS)
    # The comparison means something only if the segments are neither empty nor everyone.
    assert sum(1 for n in members.values() if 0 < n < 10_000) >= 18, members
    assert report.orders > 40_000 and report.line_items >= 2 * report.orders
    steps = [figure.step for figure in report.figures]
    assert any(step.startswith("3. full recompute") for step in steps)
    assert "daily pipeline (facts, 20 segments, snapshots, diff)" in steps
    assert "DuckDB on Parquet" in capsys.readouterr().out
