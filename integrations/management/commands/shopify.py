"""``manage.py shopify``: connect a store, import, sync segment tags, list jobs, run the emulator.

    shopify connect   --store DOMAIN --token shpat_… [--secret S] [--api-version 2026-10] [--no-check]
    shopify import    --store DOMAIN [--full]
    shopify sync-tags --store DOMAIN --slug S [--dry-run] [--remove] [--native-segment]
    shopify jobs      --store DOMAIN
    shopify emulator  [--port 8765] [--seed-store DOMAIN --token T --secret S] [--plan standard]

``import`` and ``sync-tags`` run in this process and print progress; the admin and the API queue
the same jobs for the worker instead.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ecpower.commerce.models import Store
from integrations.http import PartnerError
from integrations.models import SyncJob, SyncJobKind
from segments.models import Segment


class Command(BaseCommand):
    help = "Connect stores to Shopify, import, sync segment tags, and run the local Shopify emulator."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        p = sub.add_parser("connect")
        p.add_argument("--store", required=True)
        p.add_argument("--token", required=True, help="custom app Admin API access token")
        p.add_argument("--secret", default="", help="custom app API secret (verifies its webhooks)")
        p.add_argument("--api-version", default="")
        p.add_argument("--no-check", action="store_true", help="store the token without trying it")
        p = sub.add_parser("import")
        p.add_argument("--store", required=True)
        p.add_argument("--full", action="store_true", help="everything, through bulk operations")
        p = sub.add_parser("sync-tags")
        p.add_argument("--store", required=True)
        p.add_argument("--slug", required=True)
        p.add_argument("--dry-run", action="store_true")
        p.add_argument("--remove", action="store_true", help="remove the segment's tag from everyone we tagged")
        p.add_argument("--native-segment", action="store_true", help="also create a Shopify segment for the tag")
        p = sub.add_parser("jobs")
        p.add_argument("--store", required=True)
        p = sub.add_parser("emulator")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8765)
        p.add_argument("--seed-store", default="", help="serve this store's data as the shop")
        p.add_argument("--token", default="shpat_demo")
        p.add_argument("--secret", default="demo-webhook-secret")
        p.add_argument("--plan", default="standard", choices=["standard", "advanced", "plus"])

    def handle(self, *args, **options) -> None:
        action = options["action"]
        if action == "emulator":
            return self.emulator(options)
        store = Store.objects.filter(shopify_domain=options["store"]).first()
        if store is None:
            raise CommandError(f"No store {options['store']!r}.")
        try:
            handler = {"connect": self.connect, "import": self.import_, "sync-tags": self.sync_tags,
                       "jobs": self.jobs}[action]
            handler(store, options)
        except PartnerError as exc:
            raise CommandError(str(exc)) from exc

    def connect(self, store: Store, options) -> None:
        from integrations.shopify.connection import connect_with_token

        connect_with_token(store=store, access_token=options["token"], api_secret=options["secret"],
                           api_version=options["api_version"], check=not options["no_check"])
        self.stdout.write(self.style.SUCCESS(f"{store.shopify_domain} connected."))

    def _run(self, job: SyncJob) -> None:
        from integrations.jobs import sync_job_run

        status = sync_job_run(job.pk)
        job.refresh_from_db()
        self.stdout.write(f"{job} {status}: done {job.done}/{job.total}, failed {job.failed}")
        self.stdout.write(json.dumps(job.summary, ensure_ascii=False, indent=2, default=str))
        if job.error:
            raise CommandError(job.error)

    def import_(self, store: Store, options) -> None:  # "import" is a keyword
        from integrations.shopify.connection import connection_for

        connection_for(store)
        kind = SyncJobKind.IMPORT_FULL if options["full"] else SyncJobKind.IMPORT_CHANGES
        self._run(SyncJob.objects.create(store=store, kind=kind))

    def sync_tags(self, store: Store, options) -> None:
        from integrations.tag_sync import segment_tag

        segment = Segment.objects.filter(store=store, slug=options["slug"]).first()
        if segment is None:
            raise CommandError(f"No segment {options['slug']!r} in {store.shopify_domain}.")
        segment_tag(segment)
        kind = SyncJobKind.TAG_REMOVE if options["remove"] else SyncJobKind.TAG_SYNC
        self._run(SyncJob.objects.create(store=store, segment=segment, kind=kind, dry_run=options["dry_run"],
                                         summary={"native_segment": options["native_segment"]}))

    def jobs(self, store: Store, options) -> None:
        for job in SyncJob.objects.filter(store=store).select_related("segment")[:20]:
            self.stdout.write(f"{job.created_at:%Y-%m-%d %H:%M} #{job.pk} {job.kind:<14} {job.status:<9} "
                              f"{job.done}/{job.total} failed {job.failed} {job.segment or ''}")

    def emulator(self, options) -> None:
        from integrations.shopify.emulator.server import EmulatorServer
        from integrations.shopify.emulator.state import PLANS, World

        world = World()
        if options["seed_store"]:
            from integrations.shopify.emulator.seed import shop_from_store

            store = Store.objects.filter(shopify_domain=options["seed_store"]).first()
            if store is None:
                raise CommandError(f"No store {options['seed_store']!r} to seed from.")
            shop = shop_from_store(world, store, access_token=options["token"], api_secret=options["secret"])
            shop.plan = PLANS[options["plan"]]
            shop.bucket.plan = shop.plan
            self.stdout.write(f"Seeded {store.shopify_domain}: {len(shop.customers)} customers, "
                              f"{len(shop.orders)} orders, {len(shop.products)} products.")
        server = EmulatorServer(world, host=options["host"], port=options["port"])
        self.stdout.write(f"Shopify emulator on {server.url} (SHOPIFY_ADMIN_URL={server.admin_url()})")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            server.stop()
