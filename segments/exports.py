"""Members of a segment or list as CSV, through a django-import-export resource.

``MemberExport`` streams: customers are read in keyset-ordered chunks (tags prefetched per chunk)
and encoded as they go, so a million members never sit in memory. Encodings: ``utf-8``,
``utf-8-sig`` (with the BOM Excel needs to read UTF-8) and ``cp932`` (Shift_JIS for older Excel;
characters it cannot hold become ``?`` and the rows concerned are counted).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
from collections.abc import Iterator, Sequence

from django.db.models import Exists, OuterRef
from django.utils.translation import gettext_lazy as _
from import_export import fields, resources

from ecpower.commerce.models import Customer
from segments.models import ListUpload, Membership, Segment

# Column key → label shown in the admin's column picker. The CSV header uses the keys, which
# are also what a list upload recognises (export a list, upload it elsewhere, same customers).
COLUMNS = {
    "shopify_id": _("Shopify ID"),
    "email": _("email"),
    "first_name": _("first name"),
    "last_name": _("last name"),
    "phone": _("phone"),
    "tags": _("tags"),
    "province_code": _("province"),
    "orders_count": _("number of orders"),
    "amount_spent": _("amount spent"),
    "first_order_at": _("first order"),
    "last_order_at": _("last order"),
    "holdout": _("held out"),
}
DEFAULT_COLUMNS = ("shopify_id", "email", "first_name", "last_name", "orders_count", "amount_spent", "holdout")
ENCODINGS = {"utf-8": "utf-8", "utf-8-sig": "utf-8-sig", "cp932": "cp932", "shift_jis": "cp932", "sjis": "cp932"}
CHUNK = 2000


class MemberResource(resources.ModelResource):
    tags = fields.Field(column_name="tags")
    holdout = fields.Field(column_name="holdout")
    first_order_at = fields.Field(attribute="first_order_at", column_name="first_order_at")
    last_order_at = fields.Field(attribute="last_order_at", column_name="last_order_at")

    class Meta:
        model = Customer
        fields = tuple(COLUMNS)
        export_order = tuple(COLUMNS)

    def __init__(self, *, zone=None):
        super().__init__()
        self.zone = zone

    def _local(self, value: dt.datetime | None) -> str:
        return value.astimezone(self.zone).strftime("%Y-%m-%d %H:%M:%S") if value else ""

    def dehydrate_first_order_at(self, customer: Customer) -> str:
        return self._local(customer.first_order_at)

    def dehydrate_last_order_at(self, customer: Customer) -> str:
        return self._local(customer.last_order_at)

    def dehydrate_tags(self, customer: Customer) -> str:
        return ", ".join(sorted(tag.name for tag in customer.tags.all()))

    def dehydrate_holdout(self, customer: Customer) -> str:
        return "1" if getattr(customer, "in_holdout", False) else "0"


def check_columns(columns: Sequence[str] | None) -> list[str]:
    chosen = list(columns) if columns else list(DEFAULT_COLUMNS)
    unknown = [c for c in chosen if c not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown column(s) {', '.join(unknown)}; choose from {', '.join(COLUMNS)}")
    return chosen


def check_encoding(encoding: str) -> str:
    try:
        return ENCODINGS[encoding.lower()]
    except KeyError:
        raise ValueError(f"unknown encoding {encoding!r}; choose utf-8, utf-8-sig or cp932") from None


class MemberExport:
    """``for chunk in MemberExport(segment).chunks(): …`` gives the CSV file as bytes.

    Given several segments (of one store), rows start with a ``segment`` column (the slug) and a
    customer in two segments appears once for each.
    """

    def __init__(self, segments: Segment | Sequence[Segment], *, columns: Sequence[str] | None = None,
                 encoding: str = "utf-8", holdout: bool | None = None):
        self.segments = [segments] if isinstance(segments, Segment) else list(segments)
        if len({s.store_id for s in self.segments}) != 1:
            raise ValueError("export segments of one store at a time")
        self.columns = check_columns(columns)
        self.encoding = check_encoding(encoding)
        self.holdout = holdout  # True: only held-out members; False: only targets; None: all
        self.rows = 0
        self.replaced_rows = 0  # rows with characters the encoding cannot hold

    def queryset(self, segment: Segment):
        memberships = Membership.objects.filter(segment=segment)
        if self.holdout is not None:
            memberships = memberships.filter(holdout=self.holdout)
        customers = Customer.objects.filter(store_id=segment.store_id, pk__in=memberships.values("customer_id"))
        if "holdout" in self.columns:
            customers = customers.annotate(in_holdout=Exists(
                Membership.objects.filter(segment=segment, customer=OuterRef("pk"), holdout=True)))
        if "tags" in self.columns:
            customers = customers.prefetch_related("tags")
        return customers.order_by("pk")

    def chunks(self) -> Iterator[bytes]:
        resource = MemberResource(zone=self.segments[0].store.zone)
        several = len(self.segments) > 1
        encoder = codecs.getincrementalencoder(self.encoding)()  # utf-8-sig: the BOM once, first
        line = io.StringIO()
        writer = csv.writer(line, lineterminator="\r\n")

        def csv_line(values) -> str:
            line.seek(0)
            line.truncate()
            writer.writerow(["" if value is None else value for value in values])
            text = line.getvalue()
            try:
                text.encode(self.encoding)
            except UnicodeEncodeError:
                self.replaced_rows += 1
                text = text.encode(self.encoding, errors="replace").decode(self.encoding)
            return text

        header = resource.get_export_headers(selected_fields=self.columns)
        yield encoder.encode(csv_line(["segment", *header] if several else header))
        for segment in self.segments:
            prefix = [segment.slug] if several else []
            queryset, last_id = self.queryset(segment), 0
            while True:
                batch = list(queryset.filter(pk__gt=last_id)[:CHUNK])
                if not batch:
                    break
                text = "".join(csv_line([*prefix, *resource.export_resource(c, selected_fields=self.columns)])
                               for c in batch)
                self.rows += len(batch)
                last_id = batch[-1].pk
                yield encoder.encode(text)


def match_report_csv(upload: ListUpload) -> str:
    """The rows of a list upload that did not become members: line, value, problem."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["line", "value", "problem"])
    rows = [(line, value, reason) for line, value, reason in upload.unmatched]
    rows += [(line, value, f"duplicate of line {first}") for line, value, first in upload.duplicates]
    writer.writerows(sorted(rows))
    return out.getvalue()
