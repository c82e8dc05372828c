"""``manage.py segments``: create, update, recompute, preview and list segments from scripts.

A bad query exits non-zero with the located problems on stderr.
"""

from __future__ import annotations

import csv
import datetime as dt

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ecpower.commerce.models import Store
from segments.models import Segment
from segments.query_language import parse
from segments.rules import InvalidRule
from segments.selectors import segment_exists_checker, segment_members, segment_preview
from segments.services import (
    SegmentBusy,
    segment_create,
    segment_recompute,
    segment_update,
    store_segments_recompute,
    templates_add,
)

MEMBER_COLUMNS = ["shopify_id", "email", "first_name", "last_name", "phone", "province_code", "orders_count",
                  "amount_spent", "first_order_at", "last_order_at"]


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--as-of: {value!r} is not a date (YYYY-MM-DD)") from None


def _cell(value, zone) -> str:
    """Datetimes in the store's time zone, empty for missing values."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.astimezone(zone).isoformat(sep=" ", timespec="seconds")
    return str(value)


class Command(BaseCommand):
    help = "Create, update, recompute, preview and export condition segments."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        for name in ("create", "update", "recompute", "preview", "members", "templates"):
            p = sub.add_parser(name)
            p.add_argument("--store", required=True, help="Shopify domain of the store")
            if name in ("create", "update", "members"):
                p.add_argument("--slug", required=True)
            if name == "recompute":
                p.add_argument("--slug", help="only this segment (default: all, in dependency order)")
            if name == "create":
                p.add_argument("--name", required=True)
                p.add_argument("--description", default="")
                p.add_argument("--shopify-tag", default="")
            if name in ("create", "update", "preview"):
                p.add_argument("--query", required=True)
            if name == "update":
                p.add_argument("--name")
            if name in ("recompute", "preview"):
                p.add_argument("--as-of", type=_date, help="evaluate as of this day (YYYY-MM-DD)")
            if name == "members":
                p.add_argument("--format", choices=["csv"], default="csv")

    def handle(self, *args, action: str, **options) -> None:
        try:
            store = Store.objects.get(shopify_domain=options["store"])
        except Store.DoesNotExist:
            raise CommandError(f"no store {options['store']!r}") from None
        try:
            getattr(self, f"_{action}")(store, options)
        except InvalidRule as exc:
            for problem in exc.problems:
                self.stderr.write(str(problem))
            raise CommandError("the query is not valid") from None

    def _segment(self, store: Store, slug: str) -> Segment:
        try:
            return Segment.objects.get(store=store, slug=slug)
        except Segment.DoesNotExist:
            raise CommandError(f"no segment {slug!r} in {store.shopify_domain}") from None

    def _create(self, store: Store, options) -> None:
        segment = segment_create(
            store=store, name=options["name"], slug=options["slug"], query=options["query"],
            description=options["description"], shopify_tag=options["shopify_tag"],
        )
        result = segment_recompute(segment=segment)
        self.stdout.write(f"created {segment.slug}: {result.members} members")

    def _update(self, store: Store, options) -> None:
        segment = self._segment(store, options["slug"])
        fields = {"name": options["name"]} if options.get("name") else {}
        segment = segment_update(segment=segment, query=options["query"], **fields)
        result = segment_recompute(segment=segment)
        self.stdout.write(f"updated {segment.slug}: {result.members} members (+{result.joined} −{result.left})")

    def _recompute(self, store: Store, options) -> None:
        if options.get("slug"):
            try:
                results = [segment_recompute(segment=self._segment(store, options["slug"]), as_of=options["as_of"])]
            except SegmentBusy:
                raise CommandError(f"{options['slug']} is being computed by another worker") from None
            failed = {}
        else:
            outcome = store_segments_recompute(store=store, as_of=options["as_of"])
            results, failed = outcome.results, outcome.failed
        for r in results:
            self.stdout.write(f"{r.slug:<30} {r.members:>9} members  +{r.joined:<7} −{r.left:<7} {r.duration_ms} ms")
        for slug, error in failed.items():
            self.stderr.write(f"{slug}: FAILED: {error}")
        if failed:
            raise CommandError(f"{len(failed)} segment(s) failed")

    def _preview(self, store: Store, options) -> None:
        tree = parse(options["query"], segment_exists=segment_exists_checker(store))
        preview = segment_preview(store=store, tree=tree, as_of=options["as_of"], sample_size=0)
        self.stdout.write(str(preview.count))

    def _members(self, store: Store, options) -> None:
        segment = self._segment(store, options["slug"])
        writer = csv.writer(self.stdout, lineterminator="\n")
        writer.writerow(MEMBER_COLUMNS)
        rows = segment_members(segment).order_by("id").values_list(*MEMBER_COLUMNS)
        zone = store.zone
        for row in rows.iterator(chunk_size=5000):
            writer.writerow([_cell(value, zone) for value in row])

    def _templates(self, store: Store, options) -> None:
        created = templates_add(store=store)
        for segment in created:
            result = segment_recompute(segment=segment)
            self.stdout.write(f"added {segment.slug:<30} {result.members:>9} members  {segment.query}")
        if not created:
            self.stdout.write("every template is already there")
