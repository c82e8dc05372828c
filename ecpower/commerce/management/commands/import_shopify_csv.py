from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from ecpower.commerce.csv_import import CsvFile, shopify_csv_import
from ecpower.commerce.models import Store
from ecpower.commerce.shopify_csv import CsvFileError


class Command(BaseCommand):
    help = "Import Shopify admin CSV exports (customers_export.csv, products_export.csv, orders_export.csv)."

    def add_arguments(self, parser):
        parser.add_argument("--store", required=True, help="The store's Shopify domain, e.g. my-shop.myshopify.com")
        parser.add_argument("--create", action="store_true", help="Create the store if it does not exist.")
        parser.add_argument("--customers", type=Path, help="customers_export.csv")
        parser.add_argument("--products", type=Path, help="products_export.csv")
        parser.add_argument("--orders", type=Path, help="orders_export.csv")
        parser.add_argument("--no-progress", action="store_true", help="Do not draw a progress bar.")

    def handle(self, *args, **options):
        if not any(options[k] for k in ("customers", "products", "orders")):
            raise CommandError("Give at least one of --customers, --products, --orders.")
        domain = options["store"]
        store = Store.objects.filter(shopify_domain=domain).first()
        if store is None:
            if not options["create"]:
                raise CommandError(f"No store {domain}; pass --create to create it.")
            store = Store.objects.create(shopify_domain=domain, name=domain.split(".")[0])
            self.stdout.write(f"Created store {domain}.")

        files = {}
        for key in ("customers", "products", "orders"):
            path: Path | None = options[key]
            if path is not None:
                try:
                    files[key] = CsvFile(name=path.name, data=path.read_bytes())
                except OSError as exc:
                    raise CommandError(f"{path}: {exc.strerror}") from None

        bars: dict[str, tqdm] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if options["no_progress"]:
                return
            bar = bars.get(stage)
            if bar is None:
                bar = bars[stage] = tqdm(total=total, desc=stage, unit="row", file=self.stderr._out, leave=True)
            bar.update(done - bar.n)

        try:
            summary = shopify_csv_import(store=store, progress=progress, **files)
        except CsvFileError as exc:
            raise CommandError(f"Nothing was imported. {exc}") from None
        finally:
            for bar in bars.values():
                bar.close()
        for line in summary.lines():
            self.stdout.write(line)
        self.stdout.write(self.style.SUCCESS(f"Imported into {store.shopify_domain}."))
