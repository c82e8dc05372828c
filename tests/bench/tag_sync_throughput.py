"""Benchmark: tag-sync throughput against the Shopify emulator at the Standard plan's limits.

    make bench-tags                          # 1,000 per-call operations, 20,000 bulk operations
    python tests/bench/tag_sync_throughput.py --calls 600 --bulk 5000

The emulator runs with Shopify's Standard bucket (2,000 points, 100 points/s restored) and the
real costs (10 points per tagsAdd). The bucket's theoretical best for N per-call operations is
max(0, 10·N − 2,000) / 100 seconds (the burst, then the restore rate); the per-call path's ratio
is that time over the measured one (1.0 = the bucket is the only limit). The bulk path is not
metered by the bucket (one mutation starts it); its ratio is its operations per second over the
bucket's 10 per second, i.e. how many times faster than any per-call client can be. The emulator's
bulk operation reports RUNNING for 0.2 s; real Shopify takes longer, so the bulk figure is an upper
bound on this side's costs (planning, JSONL, upload, reading results, ledger writes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MUTATION_COST = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="operations through batched tagsAdd calls")
    parser.add_argument("--bulk", type=int, default=20_000, help="operations through one bulk mutation")
    parser.add_argument("--json", default=str(ROOT / "bench-results" / "tag_sync_throughput.json"))
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ecpower.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from ecpower.commerce.models import Customer, CustomerTag, Store
    from ecpower.commerce.services import store_data_delete
    from integrations.jobs import sync_job_run
    from integrations.models import AppliedTag, ShopifyConnection, SyncJob, SyncJobKind
    from integrations.shopify.emulator.server import EmulatorServer
    from integrations.shopify.emulator.state import PLANS, World
    from segments.models import Segment
    from segments.services import segment_create, segment_recompute

    domain, token = "bench-tags.myshopify.com", "shpat_bench"
    store, _ = Store.objects.get_or_create(shopify_domain=domain, defaults={"name": "bench tags"})
    store_data_delete(store=store)
    Segment.objects.filter(store=store).delete()
    SyncJob.objects.filter(store=store).delete()
    total = args.calls + args.bulk
    world = World()
    shop = world.add_shop(domain, access_token=token, api_secret="s", plan=PLANS["standard"])
    print(f"database: {connection.vendor}; customers: {total:,}; plan: Standard (2000 points, 100/s)")
    customers = [Customer(store=store, shopify_id=100_000 + n, email=f"b{n}@example.jp") for n in range(total)]
    Customer.objects.bulk_create(customers, batch_size=5000)
    ids = dict(Customer.objects.filter(store=store).values_list("shopify_id", "pk"))
    tags = []
    for n in range(total):
        group = "calls" if n < args.calls else "bulk"
        shop.add_customer(id=100_000 + n, email=f"b{n}@example.jp", tags=[group])
        tags.append(CustomerTag(store=store, customer_id=ids[100_000 + n], name=group))
    CustomerTag.objects.bulk_create(tags, batch_size=5000)

    rows = []
    with EmulatorServer(world) as server:
        settings.SHOPIFY_ADMIN_URL = server.admin_url()
        settings.SHOPIFY_BULK_POLL_SECONDS = 0.1
        ShopifyConnection.objects.update_or_create(store=store, defaults={
            "access_token": token, "connected_at": timezone.now(), "disconnected_at": None})
        for group, count in (("calls", args.calls), ("bulk", args.bulk)):
            if not count:
                continue
            settings.TAG_SYNC_BULK_THRESHOLD = count + 1 if group == "calls" else 0
            segment = segment_create(store=store, name=group, slug=group, query=f"customer_tags CONTAINS '{group}'",
                                     shopify_tag=f"ecp-{group}")
            segment_recompute(segment=segment)
            shop.bucket.available = shop.plan.maximum  # a full bucket at the start, as after a quiet period
            job = SyncJob.objects.create(store=store, segment=segment, kind=SyncJobKind.TAG_SYNC)
            started = time.perf_counter()
            sync_job_run(job.pk)
            seconds = time.perf_counter() - started
            job.refresh_from_db()
            tagged = sum(f"ecp-{group}" in c["tags"] for c in shop.customers.values())
            assert job.done == count and tagged == count, (group, job.done, tagged, job.error)
            assert AppliedTag.objects.filter(store=store, tag=f"ecp-{group}").count() == count
            bucket_rate = shop.plan.restore_rate / MUTATION_COST
            if group == "calls":
                best = max(0.0, count * MUTATION_COST - shop.plan.maximum) / shop.plan.restore_rate
                ratio = best / seconds
                meaning = "of the bucket's best time"
            else:
                ratio = (count / seconds) / bucket_rate
                meaning = "× the bucket's per-call ceiling"
            rows.append({"path": group, "operations": count, "seconds": round(seconds, 2),
                         "operations_per_second": round(count / seconds, 1), "ratio": round(ratio, 3),
                         "http_calls": job.summary.get("calls", 0), "bulk_operations": job.summary.get("bulk_operations", 0)})
            print(f"{group:<6} {count:>7,} ops in {seconds:7.2f} s = {count / seconds:8.1f} ops/s; "
                  f"ratio {ratio:.3f} {meaning}", flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"database": connection.vendor, "plan": "standard", "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
