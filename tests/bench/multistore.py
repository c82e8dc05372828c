"""Step 8 of the performance suite: many stores' daily runs on the Redis broker, one worker vs two.

    make bench                                            # 200 stores × 5,000 customers + one 200,000
    python tests/bench/multistore.py --stores 40 --big-store 40000

Every store gets the segment templates and a snapshot history that ends the day before yesterday
(so the run snapshots one day, as every day after the first). Then each store's daily run
(metrics.pipeline: import → recompute → snapshots → tags → partners → email; stores without a
Shopify connection skip import and tags) is queued on Redis and ``manage.py qcluster`` works
through them, first with one worker process, then, from the same starting state, with two.
Reports wall time, customers per second and the second worker's speed-up. Needs REDIS_URL
(``make bench`` uses redis://127.0.0.1:6379/7, a database of its own).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PREFIX = "bench-multi-"


def stores_build(*, stores: int, customers: int, big: int, seed: int, directory: Path) -> list:
    """All stores' rows in one generated dataset (a store id per customer), loaded with one COPY per table."""
    import numpy as np

    from ecpower.commerce.models import Store
    from ecpower.commerce.services import customer_facts_refresh
    from segments.selectors import store_today
    from segments.services import templates_add
    from tests.bench import dataset
    from tests.bench.suite import store_fresh

    for old in Store.objects.filter(shopify_domain__startswith=PREFIX):  # a previous run's: set-based deletes
        store_fresh(old.shopify_domain)
        old.delete()
    sizes = [customers] * stores + ([big] if big else [])
    made = [Store.objects.create(shopify_domain=f"{PREFIX}{n:03}.myshopify.com", name=f"bench multi {n}")
            for n in range(len(sizes))]
    products = {store.pk: dataset.catalogue_create(store) for store in made}
    store_of = np.repeat(np.array([s.pk for s in made], dtype=np.int64), sizes)
    data = dataset.generate(directory=directory, store_id=made[0].pk, customers=int(store_of.size), seed=seed,
                            until=store_today(made[0]), time_zone=made[0].time_zone, products=products,
                            first_ids=dataset.first_free_ids(), store_of=store_of)
    dataset.load(data)
    for store in made:
        customer_facts_refresh(store=store)
        templates_add(store=store)
    return made


def state_reset(stores: list) -> None:
    """Every store as on the morning of the run: no run yet today, history up to the day before yesterday."""
    from integrations.models import SyncJob
    from metrics.models import PipelineRun, SegmentSnapshot, SnapshotCursor, SnapshotMember
    from metrics.snapshots import rule_versions
    from segments.models import Membership, MembershipEvent, Segment, SegmentKind, SegmentStatus
    from segments.selectors import store_today

    for model in (PipelineRun, SyncJob, SegmentSnapshot, SnapshotMember, SnapshotCursor, MembershipEvent, Membership):
        model.objects.filter(store__in=stores).delete()
    Segment.objects.filter(store__in=stores).update(status=SegmentStatus.NEW, member_count=0)
    cursors = []
    for store in stores:
        segments = list(Segment.objects.filter(store=store, kind=SegmentKind.CONDITION))
        versions = rule_versions(segments)
        day = store_today(store) - dt.timedelta(days=2)
        cursors += [SnapshotCursor(store=store, segment=s, date=day, version=versions.get(s.pk, 0)) for s in segments]
    SnapshotCursor.objects.bulk_create(cursors)


def daily_runs(stores: list, workers: int) -> float:
    """Queue every store's run, start a cluster of ``workers`` processes, wait until all runs end."""
    from django_q.models import Schedule

    from metrics.models import PipelineRun, PipelineStatus
    from metrics.pipeline import pipeline_start
    from segments.selectors import store_today

    Schedule.objects.all().delete()  # the benchmark's own database: no dispatch or drain schedules interfere
    from django.db.models import Count

    from ecpower.commerce.models import Store

    started = time.perf_counter()
    # In the daily dispatch's order: largest stores first.
    for store in Store.objects.filter(pk__in=[s.pk for s in stores]).annotate(
            customer_count=Count("customers")).order_by("-customer_count", "pk"):
        pipeline_start(store=store, date=store_today(store))
    env = {**os.environ, "Q_WORKERS": str(workers)}
    cluster = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "qcluster"], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        finished = {PipelineStatus.SUCCEEDED, PipelineStatus.PARTIAL, PipelineStatus.FAILED}
        while PipelineRun.objects.filter(store__in=stores).exclude(status__in=finished).exists():
            if cluster.poll() is not None:
                raise RuntimeError("qcluster stopped before the runs finished")
            time.sleep(0.5)
        return time.perf_counter() - started
    finally:
        cluster.terminate()
        cluster.wait(timeout=60)


def run(*, stores: int, customers: int, big: int, seed: int, directory: Path) -> dict:
    from django.conf import settings

    from metrics.models import PipelineRun, PipelineStatus
    from tests.bench.suite import Figure, autovacuum_stand_in

    if "redis" not in settings.Q_CLUSTER:
        raise SystemExit("The multi-store run needs the Redis broker: set REDIS_URL (make bench does).")
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()  # its own database number: only our queue
    made = stores_build(stores=stores, customers=customers, big=big, seed=seed, directory=directory)
    total = stores * customers + big
    figures, seconds = [], {}
    for workers in (1, 2):
        state_reset(made)
        autovacuum_stand_in()
        seconds[workers] = daily_runs(made, workers)
        statuses = set(PipelineRun.objects.filter(store__in=made).values_list("status", flat=True))
        if PipelineStatus.FAILED in statuses:
            raise RuntimeError(f"daily runs failed with {workers} worker(s)")
        figures.append(Figure(f"8. daily run of {len(made)} stores, {workers} worker{'s' if workers > 1 else ''}",
                              seconds[workers], note=f"{total / seconds[workers]:,.0f} customers/s"))
    figures.append(Figure("8. speed-up from the second worker", seconds[2], "one worker", seconds[1],
                          note=f"{len(made)} stores, {total:,} customers"))
    return {"stores": len(made), "customers": total, "seconds": seconds, "figures": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", type=int, default=200)
    parser.add_argument("--store-customers", type=int, default=5000)
    parser.add_argument("--big-store", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", default=str(ROOT / "bench-results" / "multistore.json"))
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ecpower.settings")
    import django

    django.setup()
    import logging
    from dataclasses import asdict

    logging.getLogger("django-q").setLevel(logging.WARNING)  # not a line per queued run

    from tests.bench.suite import Report, machine

    report = Report(customers=args.stores * args.store_customers + args.big_store)
    with tempfile.TemporaryDirectory(prefix="ecpower-multistore-") as directory:
        result = run(stores=args.stores, customers=args.store_customers, big=args.big_store, seed=args.seed,
                     directory=Path(directory))
    print(f"\n{result['stores']} stores, {result['customers']:,} customers on the Redis broker")
    for figure in result["figures"]:
        report.add(figure)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**{k: v for k, v in result.items() if k != "figures"}, "machine": machine(),
                               "figures": [{**asdict(f), "ratio": f.ratio} for f in result["figures"]]},
                              indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
