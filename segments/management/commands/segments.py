"""``manage.py segments``: create, update, recompute, preview and list segments from scripts.

A bad query exits non-zero with the located problems on stderr.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ecpower.commerce.models import Store
from ecpower.commerce.shopify_csv import CsvFileError
from segments import exports
from segments.lists import (
    list_create_from_csv,
    list_create_from_expression,
    list_create_from_query,
    list_create_from_segment,
)
from segments.models import Segment
from segments.query_language import parse
from segments.rules import InvalidRule
from segments.selectors import segment_exists_checker, segment_preview
from segments.services import (
    SegmentBusy,
    segment_create,
    segment_recompute,
    segment_update,
    store_segments_recompute,
    templates_add,
)

REPORT_LINES = 20


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--as-of: {value!r} is not a date (YYYY-MM-DD)") from None


class Command(BaseCommand):
    help = "Create, update, recompute, preview and export segments; make list segments."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        for name in ("create", "update", "recompute", "preview", "members", "templates", "create-list"):
            p = sub.add_parser(name)
            p.add_argument("--store", required=True, help="Shopify domain of the store")
            if name in ("create", "update", "members", "create-list"):
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
                p.add_argument("--columns", help=f"comma-separated, from: {', '.join(exports.COLUMNS)}")
                p.add_argument("--encoding", default="utf-8", help="utf-8 (default), utf-8-sig (Excel) or cp932")
                p.add_argument("--holdout", choices=["all", "only", "exclude"], default="all",
                               help="held-out members of a list: include (all), only them, or leave them out")
                p.add_argument("--output", type=Path, help="write to this file (default: standard output)")
            if name == "create-list":
                p.add_argument("--name", required=True)
                p.add_argument("--description", default="")
                source = p.add_mutually_exclusive_group(required=True)
                source.add_argument("--query", help="customers matching this query")
                source.add_argument("--from-segment", help="a snapshot of this segment's current members")
                source.add_argument("--expression", help="set expression, e.g. '(vip | line-linked) - unsubscribed'")
                source.add_argument("--csv", type=Path, help="a CSV of emails or Shopify customer ids")
                p.add_argument("--column", help="the CSV column to read (name or 1-based number)")
                p.add_argument("--report", type=Path, help="write the unmatched and duplicate rows to this CSV")
                p.add_argument("--as-of", type=_date, help="evaluate --query as of this day (YYYY-MM-DD)")
                p.add_argument("--holdout-percent", help="hold out this share of the list, e.g. 10")
                p.add_argument("--seed", type=int, help="seed of the holdout draw (default: random, stored)")

    def handle(self, *args, action: str, **options) -> None:
        try:
            store = Store.objects.get(shopify_domain=options["store"])
        except Store.DoesNotExist:
            raise CommandError(f"no store {options['store']!r}") from None
        try:
            getattr(self, f"_{action.replace('-', '_')}")(store, options)
        except CsvFileError as exc:
            raise CommandError(str(exc)) from None
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
        columns = options["columns"].split(",") if options.get("columns") else None
        holdout = {"all": None, "only": True, "exclude": False}[options["holdout"]]
        try:
            export = exports.MemberExport(segment, columns=columns, encoding=options["encoding"], holdout=holdout)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if options.get("output"):
            with options["output"].open("wb") as out:
                for chunk in export.chunks():
                    out.write(chunk)
        else:
            out = getattr(self.stdout._out, "buffer", None)
            for chunk in export.chunks():
                if out is not None:
                    out.write(chunk)
                else:  # a text stream (tests, call_command(stdout=StringIO()))
                    self.stdout.write(chunk.decode(export.encoding), ending="")
            if out is not None:
                out.flush()
        if export.replaced_rows:
            self.stderr.write(f"{export.replaced_rows} row(s) had characters {export.encoding} cannot hold; "
                              "they were written as '?'. Use --encoding utf-8-sig to keep them.")
        if options.get("output"):
            self.stdout.write(f"{export.rows} members written to {options['output']}")

    def _create_list(self, store: Store, options) -> None:
        common = {"name": options["name"], "slug": options["slug"], "description": options["description"],
                  "holdout_percent": options["holdout_percent"], "seed": options["seed"]}
        if options["as_of"] and not options["query"]:
            raise CommandError("--as-of applies to --query only")
        if options["column"] and not options["csv"]:
            raise CommandError("--column applies to --csv only")
        if options["query"]:
            segment = list_create_from_query(store=store, query=options["query"], as_of=options["as_of"], **common)
        elif options["from_segment"]:
            source = self._segment(store, options["from_segment"])
            segment = list_create_from_segment(source=source, **common)
        elif options["expression"]:
            segment = list_create_from_expression(store=store, expression=options["expression"], **common)
        else:
            path: Path = options["csv"]
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise CommandError(f"cannot read {path}: {exc.strerror}") from None
            segment = list_create_from_csv(store=store, data=data, file_name=path.name, column=options["column"],
                                           **common)
            upload = segment.upload
            self.stdout.write(
                f"{upload.file_name}: {upload.rows} rows ({upload.encoding}, column {upload.column!r}"
                f"{', header' if upload.has_header else ', no header'}), {upload.matched} matched, "
                f"{len(upload.unmatched)} unmatched, {len(upload.duplicates)} duplicates, "
                f"{upload.blank_rows} blank"
            )
            for line, value, reason in upload.unmatched[:REPORT_LINES]:
                self.stdout.write(f"  unmatched line {line}: {value}: {reason}")
            for line, value, first in upload.duplicates[:REPORT_LINES]:
                self.stdout.write(f"  duplicate line {line}: {value} (same customer as line {first})")
            if len(upload.unmatched) > REPORT_LINES or len(upload.duplicates) > REPORT_LINES:
                self.stdout.write(f"  (first {REPORT_LINES} of each shown; --report FILE writes them all)")
            if options["report"]:
                options["report"].write_bytes(exports.match_report_csv(upload).encode("utf-8-sig"))
                self.stdout.write(f"  match report written to {options['report']}")
        held = f", {segment.holdout_count} held out ({segment.holdout_percent} %, seed {segment.holdout_seed})" \
            if segment.holdout_percent else ""
        self.stdout.write(f"created list {segment.slug}: {segment.member_count} members{held}")

    def _templates(self, store: Store, options) -> None:
        created = templates_add(store=store)
        for segment in created:
            result = segment_recompute(segment=segment)
            self.stdout.write(f"added {segment.slug:<30} {result.members:>9} members  {segment.query}")
        if not created:
            self.stdout.write("every template is already there")
