"""``manage.py metrics``: record snapshots, rebuild history, show a segment's KPIs day by day.

    metrics snapshot --store DOMAIN [--date D]           bring snapshots up to D (default yesterday)
    metrics backfill --store DOMAIN [--slug S] [--since D]
    metrics show --store DOMAIN --slug S [--since D] [--until D] [--format table|csv]
    metrics run --store DOMAIN                           the store's daily run now, in this process
"""

from __future__ import annotations

import csv
import datetime as dt
import sys

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from ecpower.commerce.models import Store
from metrics.models import PipelineRun, SegmentSnapshot
from metrics.snapshots import approximate_note, history_rebuild, snapshot_day, snapshots_update
from segments.models import Segment
from segments.selectors import store_today

COLUMNS = ("date", "period_days", "members", "joined", "left", "orders", "revenue", "buyers", "repeat_rate", "ltv",
           "aov_customer", "aov_order", "avg_orders", "purchase_interval_days", "approximate", "source")


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a date (YYYY-MM-DD)") from None


class Command(BaseCommand):
    help = "Segment snapshots: record them, backfill history, show KPIs per day; run a store's daily run."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        for name in ("snapshot", "backfill", "show", "run"):
            p = sub.add_parser(name)
            p.add_argument("--store", required=True, help="Shopify domain of the store")
            if name == "snapshot":
                p.add_argument("--date", type=_date, help="the day to record (default: yesterday, store time)")
            if name == "backfill":
                p.add_argument("--slug", help="only this segment (default: all)")
                p.add_argument("--since", type=_date, help="first day (default: first order, at most 2 years back)")
                p.add_argument("--queue", action="store_true",
                               help="queue it for the workers (progress on the job's admin page) instead of running here")
            if name == "show":
                p.add_argument("--slug", required=True)
                p.add_argument("--since", type=_date)
                p.add_argument("--until", type=_date)
                p.add_argument("--format", choices=("table", "csv"), default="table")

    def handle(self, *args, **options) -> None:
        try:
            store = Store.objects.get(shopify_domain=options["store"])
        except Store.DoesNotExist:
            raise CommandError(f"No store {options['store']!r}.") from None
        self.verbosity = options["verbosity"]
        getattr(self, "handle_" + options["action"])(store, options)

    def _segment(self, store: Store, slug: str) -> Segment:
        try:
            return Segment.objects.get(store=store, slug=slug)
        except Segment.DoesNotExist:
            raise CommandError(f"No segment {slug!r} in {store.shopify_domain}.") from None

    def _progress(self, stage: str, done: int, total: int) -> None:
        if self.verbosity and (done == total or done % 30 == 0):
            self.stderr.write(f"\r{stage}: {done}/{total}", ending="")
            if done == total:
                self.stderr.write("")

    def handle_snapshot(self, store: Store, options) -> None:
        day = options["date"]
        if day is not None and day >= store_today(store):
            raise CommandError(f"--date {day}: only finished days are recorded (today is {store_today(store)}).")
        if day is None:
            result = snapshots_update(store=store, progress=self._progress)
        else:
            result = snapshot_day(store=store, day=day, progress=self._progress)
        self._report(result)

    def handle_backfill(self, store: Store, options) -> None:
        if options["queue"]:
            from django.conf import settings
            from django.urls import reverse

            from metrics.tasks import backfill_start

            segment = self._segment(store, options["slug"]) if options["slug"] else None
            job = backfill_start(store=store, segment=segment, since=options["since"], all_segments=segment is None)
            link = settings.PUBLIC_URL.rstrip("/") + reverse("admin:integrations_syncjob_change", args=[job.pk])
            self.stdout.write(f"Queued backfill job #{job.pk}: {link}")
            return
        segments = [self._segment(store, options["slug"])] if options["slug"] else None
        result = history_rebuild(store=store, segments=segments, since=options["since"], progress=self._progress)
        self._report(result)

    def handle_run(self, store: Store, options) -> None:
        from metrics.pipeline import pipeline_run

        today = timezone.now().astimezone(store.zone).date()
        run, _created = PipelineRun.objects.get_or_create(store=store, date=today)
        status = pipeline_run(run.pk)
        run.refresh_from_db()
        for step, outcome in run.summary.items():
            self.stdout.write(f"{step:10} {outcome['status']:10} {outcome.get('reason') or outcome.get('error') or ''}")
        self.stdout.write(f"daily run {run.date}: {status if status == 'skipped' else run.status}")

    def _report(self, result) -> None:
        if result.days:
            self.stdout.write(f"{result.snapshots} snapshots over {result.days} days ({result.first} – {result.last})")
        else:
            self.stdout.write("Nothing to record: snapshots are up to date.")
        for slug, why in sorted(result.approximate.items()):
            reasons = "; ".join(approximate_note(r) for r in why.split(", "))
            self.stdout.write(f"approximate: {slug}: {reasons}")
        for slug, error in sorted(result.failed.items()):
            self.stderr.write(f"failed: {slug}: {error}")
        if result.failed:
            raise CommandError(f"{len(result.failed)} segment(s) could not be evaluated.")

    def handle_show(self, store: Store, options) -> None:
        segment = self._segment(store, options["slug"])
        rows = SegmentSnapshot.objects.filter(segment=segment).order_by("date")
        if options["since"]:
            rows = rows.filter(date__gte=options["since"])
        if options["until"]:
            rows = rows.filter(date__lte=options["until"])
        values = [[_text(getattr(row, column)) for column in COLUMNS] for row in rows]
        if options["format"] == "csv":
            writer = csv.writer(self.stdout._out if hasattr(self.stdout, "_out") else sys.stdout, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(values)
            return
        if not values:
            self.stdout.write(f"No snapshots of {segment.slug} yet: run `manage.py metrics backfill`.")
            return
        widths = [max(len(c), *(len(v[i]) for v in values)) for i, c in enumerate(COLUMNS)]
        self.stdout.write("  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths, strict=True)))
        for row in values:
            self.stdout.write("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
