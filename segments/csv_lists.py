"""Reading a CSV of customers (emails, Shopify ids or ``gid://shopify/Customer/…``) for a list.

``read_identifiers`` finds the column (by name, by number, or by looking at the values), tolerates
blank lines, a BOM, Shift_JIS/CP932 from Excel, comma, tab or semicolon separators and Shopify's
``'``-guarded ids; ``match_identifiers`` looks the values up in one store and gives the match
report: matched customers in file order, unmatched rows with a reason, duplicate rows.
Anything that cannot be read raises ``CsvFileError`` naming the file, line and column.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

from django.db.models.functions import Lower
from django.utils.translation import gettext as _

from ecpower.commerce.models import Customer, Store
from ecpower.commerce.shopify_csv import DIGITS, SCIENTIFIC_NUMBER, CsvFileError, clean, decode_csv_bytes

LOOKUP_CHUNK = 2000
SAMPLE_ROWS = 200
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_GID = re.compile(r"^gid://shopify/([A-Za-z]+)/(\d+)$")
# Header names (lower case, without spaces, _ or -) that name an identifier column, by preference:
# Shopify customer ids are exact; emails next; a bare "id" may be another system's.
KNOWN_HEADERS = {
    "shopifyid": 0, "customerid": 0, "shopifycustomerid": 0, "顧客id": 0,
    "email": 1, "emailaddress": 1, "mail": 1, "メールアドレス": 1, "メール": 1, "eメール": 1,
    "id": 2, "gid": 2,
}


@dataclass
class IdentifierColumn:
    file_name: str
    size_bytes: int
    encoding: str
    has_header: bool
    column: str  # the header name, or "column N" when there is no header
    values: list[tuple[int, str]]  # (line, cell) of non-blank rows
    blank_rows: int


@dataclass
class MatchReport:
    customer_ids: list[int] = field(default_factory=list)  # matched, in file order, each once
    unmatched: list[tuple[int, str, str]] = field(default_factory=list)  # (line, value, reason)
    duplicates: list[tuple[int, str, int]] = field(default_factory=list)  # (line, value, first line)

    @property
    def matched(self) -> int:
        return len(self.customer_ids)


def looks_like_identifier(cell: str) -> bool:
    value = clean(cell)
    return bool(_EMAIL.match(value) or DIGITS.match(value) or _GID.match(value) or SCIENTIFIC_NUMBER.match(value))


def _header_key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.strip().lower())


def _dialect(text: str) -> type[csv.Dialect] | csv.Dialect:
    try:
        return csv.Sniffer().sniff(text[:4096], delimiters=",\t;")
    except csv.Error:
        return csv.excel


def read_identifiers(data: bytes, *, file_name: str, column: str | None = None, max_bytes: int) -> IdentifierColumn:
    if len(data) > max_bytes:
        raise CsvFileError(file_name, _("The file is %(size).1f MB; the limit is %(limit).1f MB.")
                           % {"size": len(data) / 1e6, "limit": max_bytes / 1e6})
    text, encoding = decode_csv_bytes(data, file_name=file_name)
    reader = csv.reader(io.StringIO(text, newline=""), _dialect(text))
    rows: list[tuple[int, list[str]]] = []
    line = 1
    try:
        for record in reader:
            rows.append((line, record))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise CsvFileError(file_name, str(exc), line=reader.line_num) from None
    non_blank = [(n, r) for n, r in rows if any(cell.strip() for cell in r)]
    if not non_blank:
        raise CsvFileError(file_name, _("The file has no rows."))
    first_position = next(i for i, (_n, r) in enumerate(rows) if any(cell.strip() for cell in r))
    first = rows[first_position][1]
    header_cells = [cell.strip() for cell in first]
    has_header = not any(looks_like_identifier(cell) for cell in first)
    index = _choose_column(file_name, header_cells, has_header, non_blank, column)
    if column is not None and not column.strip().isdigit():
        has_header = True  # a column chosen by name: the first row is its header
    label = header_cells[index] if has_header and header_cells[index] else _("column %(n)d") % {"n": index + 1}
    data_rows = rows[first_position + 1:] if has_header else rows
    values, blank = [], 0
    for number, record in data_rows:
        cell = record[index].strip() if index < len(record) else ""
        if cell:
            values.append((number, cell))
        else:
            blank += 1
    return IdentifierColumn(file_name, len(data), encoding, has_header, label, values, blank)


def _choose_column(file_name: str, header: list[str], has_header: bool, rows, column: str | None) -> int:
    width = max(len(r) for _n, r in rows)
    if column is not None and column.strip():
        wanted = column.strip()
        if wanted.isdigit():
            index = int(wanted) - 1
            if not 0 <= index < width:
                raise CsvFileError(file_name, _("There is no column %(n)s; the file has %(width)d column(s).")
                                   % {"n": wanted, "width": width})
            return index
        keys = [_header_key(name) for name in header]
        if _header_key(wanted) in keys:
            return keys.index(_header_key(wanted))
        raise CsvFileError(file_name, _("There is no column named %(name)r; the first row has: %(header)s.")
                           % {"name": wanted, "header": ", ".join(header) or "—"}, line=rows[0][0])
    if has_header:
        ranked = sorted((KNOWN_HEADERS[_header_key(name)], i) for i, name in enumerate(header)
                        if _header_key(name) in KNOWN_HEADERS)
        if ranked:
            return ranked[0][1]
    sample = rows[1 : SAMPLE_ROWS + 1] if has_header else rows[:SAMPLE_ROWS]
    scores = [sum(1 for _n, r in sample if i < len(r) and looks_like_identifier(r[i])) for i in range(width)]
    best = max(range(width), key=lambda i: scores[i])
    if scores[best] == 0:
        raise CsvFileError(
            file_name,
            _("No column of email addresses or Shopify customer ids was found. Name the column 'email' or "
              "'customer_id', or choose it explicitly."),
        )
    return best


def _identifier(value: str) -> tuple[str, str | int] | str:
    """("email", address) or ("id", shopify id), or the reason the value is not an identifier."""
    value = clean(value)
    if _EMAIL.match(value):
        return "email", value.lower()
    if DIGITS.match(value):
        return "id", int(value)
    gid = _GID.match(value)
    if gid:
        if gid.group(1) != "Customer":
            return _("%(kind)s ids are not customers.") % {"kind": gid.group(1)}
        return "id", int(gid.group(2))
    if SCIENTIFIC_NUMBER.match(value):
        return _("Excel turned this id into a rounded number; the original cannot be recovered.")
    return _("Not an email address or a Shopify customer id.")


def match_identifiers(store: Store, values: list[tuple[int, str]]) -> MatchReport:
    parsed = [(line, value, _identifier(value)) for line, value in values]
    emails = sorted({ident[1] for _l, _v, ident in parsed if isinstance(ident, tuple) and ident[0] == "email"})
    ids = sorted({ident[1] for _l, _v, ident in parsed if isinstance(ident, tuple) and ident[0] == "id"})
    by_email: dict[str, int] = {}
    for start in range(0, len(emails), LOOKUP_CHUNK):
        chunk = emails[start : start + LOOKUP_CHUNK]
        by_email.update(
            Customer.objects.filter(store=store).annotate(email_lower=Lower("email"))
            .filter(email_lower__in=chunk).values_list("email_lower", "id")
        )
    by_id: dict[int, int] = {}
    for start in range(0, len(ids), LOOKUP_CHUNK):
        chunk = ids[start : start + LOOKUP_CHUNK]
        by_id.update(Customer.objects.filter(store=store, shopify_id__in=chunk).values_list("shopify_id", "id"))

    report = MatchReport()
    first_line_of_key: dict[object, int] = {}
    first_line_of_customer: dict[int, int] = {}
    for line, value, ident in parsed:
        if isinstance(ident, str):
            report.unmatched.append((line, value, ident))
            continue
        if ident in first_line_of_key:
            report.duplicates.append((line, value, first_line_of_key[ident]))
            continue
        first_line_of_key[ident] = line
        kind, key = ident
        customer_id = by_email.get(key) if kind == "email" else by_id.get(key)
        if customer_id is None:
            reason = (_("No customer with this email address in the store.") if kind == "email"
                      else _("No customer with this Shopify id in the store."))
            report.unmatched.append((line, value, reason))
        elif customer_id in first_line_of_customer:
            report.duplicates.append((line, value, first_line_of_customer[customer_id]))
        else:
            first_line_of_customer[customer_id] = line
            report.customer_ids.append(customer_id)
    return report
