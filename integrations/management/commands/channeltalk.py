"""``manage.py channeltalk``: connect a store, push its segments, run the local emulator.

    channeltalk connect  --store DOMAIN --key K --secret S [--url URL] [--segments slug,slug] [--member-id email]
    channeltalk push     --store DOMAIN
    channeltalk emulator [--port 8766] [--key K --secret S]
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ecpower.commerce.models import Store
from integrations.http import PartnerError
from integrations.models import ChannelTalkConnection, MemberIdSource
from segments.models import Segment


class Command(BaseCommand):
    help = "Connect stores to Channel Talk, push segment membership, run the local Channel Talk emulator."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        p = sub.add_parser("connect")
        p.add_argument("--store", required=True)
        p.add_argument("--key", required=True, help="Channel Talk access key")
        p.add_argument("--secret", required=True, help="Channel Talk access secret")
        p.add_argument("--url", default="https://api.channel.io", help="API address (the emulator for the demo)")
        p.add_argument("--segments", default="", help="slugs of the segments to push, comma separated")
        p.add_argument("--member-id", choices=MemberIdSource.values, default=MemberIdSource.SHOPIFY_ID)
        p = sub.add_parser("push")
        p.add_argument("--store", required=True)
        p = sub.add_parser("emulator")
        p.add_argument("--port", type=int, default=8766)
        p.add_argument("--key", default="ct-key")
        p.add_argument("--secret", default="ct-secret")

    def _store(self, domain: str) -> Store:
        try:
            return Store.objects.get(shopify_domain=domain)
        except Store.DoesNotExist:
            raise CommandError(f"No store {domain!r}.") from None

    def handle(self, *args, **options):
        getattr(self, "handle_" + options["action"])(options)

    def handle_connect(self, options):
        store = self._store(options["store"])
        slugs = [s for s in options["segments"].split(",") if s]
        segments = list(Segment.objects.filter(store=store, slug__in=slugs))
        missing = set(slugs) - {s.slug for s in segments}
        if missing:
            raise CommandError(f"No segment {', '.join(sorted(missing))} in {store.shopify_domain}.")
        connection, _created = ChannelTalkConnection.objects.update_or_create(store=store, defaults={
            "access_key": options["key"], "access_secret": options["secret"], "base_url": options["url"],
            "member_id_source": options["member_id"], "active": True})
        if slugs:
            connection.segments.set(segments)
        self.stdout.write(f"{store.shopify_domain} connected to Channel Talk at {options['url']}; "
                          f"{connection.segments.count()} segments pushed.")

    def handle_push(self, options):
        from integrations.channeltalk.push import channeltalk_push

        store = self._store(options["store"])
        try:
            result = channeltalk_push(store=store)
        except PartnerError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"pushed {result.pushed}, unchanged {result.unchanged}, skipped {result.skipped}, "
                          f"{result.calls} calls")

    def handle_emulator(self, options):
        from integrations.channeltalk.emulator import ChannelTalkEmulator

        emulator = ChannelTalkEmulator(options["key"], options["secret"], port=options["port"]).start()
        self.stdout.write(f"Channel Talk emulator on {emulator.base_url} (key {options['key']})")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            emulator.stop()
