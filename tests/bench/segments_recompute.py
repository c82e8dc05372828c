"""Benchmark: recompute 20 representative segments of a generated store.

    make bench                       # 100,000 customers on PostgreSQL
    make bench BENCH_CUSTOMERS=20000

Builds the demo store (deterministic seed) in its own database, creates 20 segments covering
every condition type, recomputes them all once (timed, with the SQL statements of each counted),
then measures a baseline in the same run: the same rules evaluated one customer at a time with the
ORM on a sample, extrapolated to the store. The sample also checks correctness: each sampled
customer's per-customer verdict must equal its stored membership. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SEGMENTS = {
    "first-time": "number_of_orders = 1",
    "loyal": "number_of_orders >= 5",
    "repeat-range": "number_of_orders BETWEEN 2 AND 4",
    "high-spend": "amount_spent >= 50000",
    "high-aov": "average_order_value >= 8000",
    "dormant": "number_of_orders >= 1 AND last_order_date < -90d",
    "at-risk": "number_of_orders >= 2 AND last_order_date BETWEEN -180d AND -60d",
    "new-30d": "first_order_date >= -30d",
    "added-this-year": "customer_added_date >= -1y",
    "line-linked": "customer_tags CONTAINS 'LINE連携'",
    "tokyo-subscribers": "customer_regions CONTAINS 'JP-13' AND email_subscription_status = 'SUBSCRIBED'",
    "first-code": "first_order_discount_code = 'WELCOME10' OR first_order_utm_campaign IS NOT NULL",
    "tea-3x-year": "products_purchased MATCHES (tag = 'tea', date > -1y, count >= 3)",
    "ware-first-order": "products_purchased MATCHES (product_type = '器', order_number = 1)",
    "matcha-2-to-5": "products_purchased MATCHES (tag = 'matcha', order_number BETWEEN 2 AND 5)",
    "sencha-quantity": "products_purchased MATCHES (sku IN ('TEA-SEN-50', 'TEA-SEN-100'), sum_quantity >= 4)",
    "no-recent-purchase": "products_purchased NOT MATCHES (date > -3m) AND number_of_orders >= 1",
    "frequent-year": "orders_placed MATCHES (date >= -12m, count >= 3)",
    "loyal-not-dormant": "in_segment('loyal') AND NOT in_segment('dormant')",
    "either": "NOT (number_of_orders = 0 OR amount_spent < 3000) AND (in_segment('tea-3x-year') OR "
              "customer_tags CONTAINS 'subscription')",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=100, help="customers for the per-customer baseline")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=str(ROOT / "bench-results" / "segments_recompute.json"))
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ecpower.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    import django

    django.setup()
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    from ecpower.commerce.demo import generate_demo_store
    from ecpower.commerce.models import Store
    from ecpower.commerce.services import store_data_delete
    from segments import rules
    from segments.models import Membership, Segment
    from segments.selectors import evaluation_context, store_today
    from segments.services import segment_create, segment_recompute

    print(f"database: {connection.vendor}; customers: {args.customers:,}")
    store, _ = Store.objects.get_or_create(shopify_domain="bench.myshopify.com", defaults={"name": "bench"})
    store_data_delete(store=store)
    Segment.objects.filter(store=store).delete()  # memberships are gone already: a cheap cascade
    started = time.perf_counter()
    generate_demo_store(store=store, customers=args.customers, seed=args.seed, until=store_today(store))
    print(f"generated the store in {time.perf_counter() - started:.1f} s")

    segments = [segment_create(store=store, name=slug, slug=slug, query=query) for slug, query in SEGMENTS.items()]
    rows = []
    print(f"\n{'segment':<22}{'members':>10}{'ms':>9}{'queries':>9}")
    total_started = time.perf_counter()
    for segment in segments:
        reset_queries()
        with CaptureQueriesContext(connection) as queries:
            result = segment_recompute(segment=segment)
        rows.append({"slug": segment.slug, "members": result.members, "ms": result.duration_ms,
                     "queries": len(queries.captured_queries)})
        row = rows[-1]
        print(f"{row['slug']:<22}{row['members']:>10,}{row['ms']:>9}{row['queries']:>9}", flush=True)
    total_s = time.perf_counter() - total_started

    # Steady state: the daily run, where most members stay (here: nothing changed).
    again_started = time.perf_counter()
    for segment in segments:
        segment_recompute(segment=segment)
    again_s = time.perf_counter() - again_started
    print(f"first recompute of all: {total_s:.2f} s; again with nothing changed: {again_s:.2f} s", flush=True)
    print(f"now the per-customer baseline on {args.sample} customers…", flush=True)
    # Baseline: the same rules, one customer at a time with the ORM, on a random sample.
    rng = random.Random(args.seed)
    ids = list(store.customers.values_list("id", flat=True))
    sample = rng.sample(ids, min(args.sample, len(ids)))
    context = evaluation_context(store=store)
    members = {s.pk: set(Membership.objects.filter(segment=s, customer_id__in=sample).values_list("customer_id", flat=True))
               for s in segments}
    mismatches = 0
    baseline_started = time.perf_counter()
    for segment in segments:
        q = rules.compile_rule(segment.rule, context)
        for customer_id in sample:
            verdict = rules.universe(context).filter(q, pk=customer_id).exists()
            mismatches += verdict != (customer_id in members[segment.pk])
    baseline_s = (time.perf_counter() - baseline_started) * len(ids) / len(sample)

    print(f"\n20 segments, set-based recompute: {total_s:.2f} s first time, {again_s:.2f} s when nothing changed "
          f"(median {statistics.median(r['ms'] for r in rows)} ms, at most {max(r['queries'] for r in rows)} "
          f"statements per segment)")
    print(f"per-customer ORM baseline, extrapolated from {len(sample)} customers: {baseline_s:.1f} s")
    print(f"speed-up: {baseline_s / total_s:.0f}× (first), {baseline_s / again_s:.0f}× (unchanged); "
          f"sampled verdicts that disagree: {mismatches}")

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "database": connection.vendor, "customers": args.customers, "segments": rows,
        "recompute_seconds": round(total_s, 3), "recompute_unchanged_seconds": round(again_s, 3), "baseline_seconds_extrapolated": round(baseline_s, 3),
        "baseline_sample": len(sample), "speedup": round(baseline_s / total_s, 1), "mismatches": mismatches,
    }, indent=2))
    print(f"wrote {out}")
    if mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
