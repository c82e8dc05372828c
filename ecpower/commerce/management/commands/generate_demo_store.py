from __future__ import annotations

import datetime as dt
import time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from ecpower.commerce.demo import generate_demo_store
from ecpower.commerce.models import Customer, Store
from ecpower.commerce.services import store_data_delete


class Command(BaseCommand):
    help = "Build a deterministic, realistic Japanese D2C demo store (same seed and --until, same data)."

    def add_arguments(self, parser):
        parser.add_argument("--store", required=True, help="Shopify domain of the demo store (created if missing).")
        parser.add_argument("--customers", type=int, default=5000)
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--until", type=dt.date.fromisoformat, help="Last day of order history (default: today).")
        parser.add_argument("--replace", action="store_true", help="Delete the store's existing data first.")

    def handle(self, *args, **options):
        if options["customers"] < 1:
            raise CommandError("--customers must be at least 1.")
        store, created = Store.objects.get_or_create(
            shopify_domain=options["store"],
            defaults={"name": "茶舗 ecpower デモ", "notification_email": "crm@example.jp"},
        )
        if Customer.objects.filter(store=store).exists():
            if not options["replace"]:
                raise CommandError(f"{store.shopify_domain} already has data; pass --replace to rebuild it.")
            store_data_delete(store=store)
        until = options["until"] or timezone.localdate(timezone=store.zone)
        started = time.monotonic()
        summary = generate_demo_store(store=store, customers=options["customers"], seed=options["seed"], until=until)
        self.stdout.write(
            self.style.SUCCESS(
                f"{store.shopify_domain}: {summary.customers} customers, {summary.orders} orders, "
                f"{summary.line_items} line items, {summary.products} products "
                f"in {time.monotonic() - started:.1f} s."
            )
        )
