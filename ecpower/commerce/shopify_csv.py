"""Read the CSV files Shopify's admin exports: customers, products and orders.

Parsing is pure and complete before anything is written: a file with one broken row raises
``CsvFileError`` naming the file, line and column, and nothing from it is stored.
The formats are described in docs/shopify-csv.md (and ../shared/reference/integrations.md §H).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from django.utils.translation import gettext as _

UTF8_BOM = b"\xef\xbb\xbf"


class CsvFileError(Exception):
    """A file that cannot be imported, with where and why."""

    def __init__(self, file_name: str, message: str, *, line: int | None = None, column: str | None = None):
        self.file_name = file_name
        self.message = message
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file_name
        if self.line is not None:
            where += f", line {self.line}"
        if self.column:
            where += f", column '{self.column}'"
        return f"{where}: {self.message}"


# --- decoding ---------------------------------------------------------------------------------


def decode_csv_bytes(data: bytes, *, file_name: str) -> tuple[str, str]:
    """Text and encoding of a CSV file: UTF-8 (with or without BOM), else Shift_JIS (CP932).

    Shopify writes UTF-8; Excel on Japanese Windows saves CP932. Anything else is refused,
    with the line of the first byte that is neither.
    """
    if not data.strip():
        raise CsvFileError(file_name, _("The file is empty."))
    if data.startswith(UTF8_BOM):
        encoding = "utf-8-sig"
    else:
        encoding = "utf-8"
    try:
        return data.decode(encoding), encoding
    except UnicodeDecodeError as utf8_error:
        if encoding == "utf-8-sig":
            raise CsvFileError(
                file_name,
                _("The file starts with a UTF-8 mark but is not valid UTF-8."),
                line=data[: utf8_error.start].count(b"\n") + 1,
            ) from None
        try:
            return data.decode("cp932"), "cp932"
        except UnicodeDecodeError:
            raise CsvFileError(
                file_name,
                _("The file is neither UTF-8 nor Shift_JIS (CP932); save it as CSV UTF-8 and try again."),
                line=data[: utf8_error.start].count(b"\n") + 1,
            ) from None


@dataclass
class CsvRow:
    line: int
    values: dict[str, str]


def read_rows(data: bytes, *, file_name: str, required: tuple[str, ...], kind: str) -> tuple[list[str], list[CsvRow]]:
    text, _encoding = decode_csv_bytes(data, file_name=file_name)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise CsvFileError(file_name, _("The file is empty.")) from None
    except csv.Error as exc:
        raise CsvFileError(file_name, str(exc), line=1) from None
    header = [name.strip() for name in header]
    missing = [name for name in required if name not in header]
    if missing:
        raise CsvFileError(
            file_name,
            _("This is not Shopify's %(kind)s export: missing column(s) %(columns)s.")
            % {"kind": kind, "columns": ", ".join(missing)},
            line=1,
        )
    rows: list[CsvRow] = []
    line = reader.line_num
    try:
        for record in reader:
            start_line = line + 1
            line = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if len(record) > len(header):
                raise CsvFileError(
                    file_name,
                    _("The row has %(found)s fields but the header has %(expected)s.")
                    % {"found": len(record), "expected": len(header)},
                    line=start_line,
                )
            record += [""] * (len(header) - len(record))
            rows.append(CsvRow(start_line, dict(zip(header, record, strict=True))))
    except csv.Error as exc:
        raise CsvFileError(file_name, str(exc), line=reader.line_num) from None
    return header, rows


# --- values -----------------------------------------------------------------------------------

DIGITS = re.compile(r"^\d+$")
SCIENTIFIC_NUMBER = re.compile(r"^\d+(\.\d+)?[eE]\+?\d+$")
_DATETIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S %z",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%Y-%m-%d",
    "%Y/%m/%d",
)


def clean(value: str) -> str:
    """Trim a cell and drop the apostrophe Shopify puts before numbers that spreadsheets mangle."""
    value = value.strip()
    if value.startswith("'"):
        value = value[1:].strip()
    return value


def parse_shopify_id(value: str) -> int | None:
    value = clean(value)
    if value.startswith("gid://shopify/"):
        value = value.rsplit("/", 1)[-1]
    if not value:
        return None
    if DIGITS.match(value):
        return int(value)
    if SCIENTIFIC_NUMBER.match(value):
        raise ValueError(
            _("%(value)s is an id that Excel turned into a rounded number; export the file from Shopify again "
              "and do not save it from Excel.") % {"value": value}
        )
    raise ValueError(_("%(value)s is not a Shopify id.") % {"value": value})


_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")


def parse_decimal(value: str, *, default: Decimal | None = Decimal("0")) -> Decimal | None:
    """A plain decimal (``1944.00``); ``1,944`` thousands separators and a yen sign are tolerated,
    a decimal comma (``1.944,00``) is refused rather than misread."""
    value = clean(value).lstrip("¥￥")
    if not value:
        return default
    if "," in value:
        if not _THOUSANDS.match(value):
            raise ValueError(_("%(value)s is not a number like 1944.00.") % {"value": value})
        value = value.replace(",", "")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(_("%(value)s is not a number.") % {"value": value}) from None
    if not number.is_finite():
        raise ValueError(_("%(value)s is not a number.") % {"value": value})
    return number.quantize(Decimal("0.01"))


def parse_quantity(value: str) -> int:
    value = clean(value)
    if not DIGITS.match(value):
        raise ValueError(_("%(value)s is not a whole number of items.") % {"value": value or "''"})
    return int(value)


def parse_datetime(value: str, *, zone: zoneinfo.ZoneInfo) -> dt.datetime | None:
    """Shopify writes ``2025-05-11 09:55:16 -0400``; Excel re-saves without the offset
    (then the store's time zone applies)."""
    value = clean(value)
    if not value:
        return None
    for fmt in _DATETIME_FORMATS:
        try:
            parsed = dt.datetime.strptime(value, fmt)
        except ValueError:
            continue
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zone)
        return parsed.astimezone(dt.UTC)
    raise ValueError(_("%(value)s is not a date and time like 2025-05-11 09:55:16 +0900.") % {"value": value})


def parse_yes_no(value: str) -> bool | None:
    value = clean(value).lower()
    if value in ("yes", "true", "1"):
        return True
    if value in ("no", "false", "0"):
        return False
    if value == "":
        return None
    raise ValueError(_("%(value)s is neither yes nor no.") % {"value": value})


def parse_tags(value: str) -> list[str]:
    """Shopify tags: comma separated, trimmed, unique regardless of letter case (first spelling wins)."""
    tags: list[str] = []
    seen: set[str] = set()
    for tag in value.split(","):
        tag = tag.strip()
        if tag and tag.lower() not in seen:
            if len(tag) > 255:
                raise ValueError(_("The tag %(tag)s… is longer than 255 characters.") % {"tag": tag[:20]})
            seen.add(tag.lower())
            tags.append(tag)
    return tags


def normalize_province(province: str, country: str) -> str:
    """Shopify's province codes: ``JP-13`` for Tokyo. A bare ``13`` with a country becomes ``JP-13``."""
    province = clean(province)
    country = clean(country).upper()
    if province and country and DIGITS.match(province):
        return f"{country}-{province.zfill(2)}"
    return province


def parse_note_attributes(value: str) -> dict[str, str]:
    """``Note Attributes`` cells hold ``key: value`` lines; UTM parameters often arrive that way."""
    attributes = {}
    for line in value.splitlines():
        if ":" in line:
            key, _sep, val = line.partition(":")
            attributes[key.strip().lower()] = val.strip()
    return attributes


class _RowReader:
    """Reads typed values from one row, turning ValueError into a located CsvFileError."""

    def __init__(self, file_name: str, row: CsvRow):
        self.file_name = file_name
        self.row = row

    def has(self, column: str) -> bool:
        return column in self.row.values

    def text(self, column: str, default: str = "") -> str:
        return clean(self.row.values.get(column, default))

    def typed(self, column: str, parser: Callable, **kwargs):
        try:
            return parser(self.row.values.get(column, ""), **kwargs)
        except ValueError as exc:
            raise CsvFileError(self.file_name, str(exc), line=self.row.line, column=column) from None

    def error(self, message: str, column: str | None = None) -> CsvFileError:
        return CsvFileError(self.file_name, message, line=self.row.line, column=column)


# --- customers --------------------------------------------------------------------------------

CUSTOMER_REQUIRED = ("First Name", "Last Name", "Email")


@dataclass
class CustomerRecord:
    line: int
    shopify_id: int | None
    email: str
    fields: dict[str, object]
    tags: list[str] | None  # None when the file has no Tags column


def parse_customers(data: bytes, *, file_name: str) -> list[CustomerRecord]:
    _header, rows = read_rows(data, file_name=file_name, required=CUSTOMER_REQUIRED, kind=_("customers"))
    records: list[CustomerRecord] = []
    seen_ids: dict[int, int] = {}
    seen_emails: dict[str, int] = {}
    for row in rows:
        r = _RowReader(file_name, row)
        shopify_id = r.typed("Customer ID", parse_shopify_id)
        email = r.text("Email")
        if email and "@" not in email:
            raise r.error(_("%(value)s is not an email address.") % {"value": email}, "Email")
        if shopify_id is None and not email:
            raise r.error(_("A customer needs a Customer ID or an Email."), "Email")
        for key, seen, column in ((shopify_id, seen_ids, "Customer ID"), (email.lower(), seen_emails, "Email")):
            if key:
                if key in seen:
                    raise r.error(
                        _("This customer also appears on line %(line)s.") % {"line": seen[key]}, column
                    )
                seen[key] = row.line
        country = r.text("Default Address Country Code").upper()
        fields: dict[str, object] = {
            "first_name": r.text("First Name"),
            "last_name": r.text("Last Name"),
            "email": email,
            "phone": r.text("Phone") or r.text("Default Address Phone"),
            "country_code": country,
            "province_code": normalize_province(r.text("Default Address Province Code"), country),
            "city": r.text("Default Address City"),
            "zip": r.text("Default Address Zip"),
        }
        consent_column = "Accepts Email Marketing" if r.has("Accepts Email Marketing") else "Accepts Marketing"
        if r.has(consent_column):
            accepts = r.typed(consent_column, parse_yes_no)
            fields["email_marketing"] = "SUBSCRIBED" if accepts else "NOT_SUBSCRIBED"
        if r.has("Accepts SMS Marketing"):
            accepts_sms = r.typed("Accepts SMS Marketing", parse_yes_no)
            fields["sms_marketing"] = "SUBSCRIBED" if accepts_sms else "NOT_SUBSCRIBED"
        if r.has("Note"):
            fields["note"] = r.row.values["Note"].strip()
        tags = r.typed("Tags", parse_tags) if r.has("Tags") else None
        records.append(CustomerRecord(row.line, shopify_id, email, fields, tags))
    return records


# --- products ---------------------------------------------------------------------------------

PRODUCT_REQUIRED = ("Handle", "Title")


@dataclass
class VariantRecord:
    sku: str
    title: str
    price: Decimal | None
    position: int


@dataclass
class ProductRecord:
    line: int
    handle: str
    fields: dict[str, object]
    tags: list[str]
    variants: list[VariantRecord] = field(default_factory=list)


def parse_products(data: bytes, *, file_name: str) -> list[ProductRecord]:
    header, rows = read_rows(data, file_name=file_name, required=PRODUCT_REQUIRED, kind=_("products"))
    option_columns = [c for c in ("Option1 Value", "Option2 Value", "Option3 Value") if c in header]
    products: dict[str, ProductRecord] = {}
    for row in rows:
        r = _RowReader(file_name, row)
        handle = r.text("Handle")
        if not handle:
            raise r.error(_("The handle is empty."), "Handle")
        product = products.get(handle)
        if product is None:
            title = r.text("Title")
            if not title:
                raise r.error(_("The first row of a product needs its title."), "Title")
            product = ProductRecord(
                line=row.line,
                handle=handle,
                fields={
                    "title": title,
                    "product_type": r.text("Type"),
                    "vendor": r.text("Vendor"),
                    "category": r.text("Product Category"),
                    "status": r.text("Status"),
                },
                tags=r.typed("Tags", parse_tags),
            )
            products[handle] = product
        sku = r.text("Variant SKU")
        price = r.typed("Variant Price", parse_decimal, default=None)
        options = [r.text(c) for c in option_columns]
        # Image-only rows carry neither SKU nor price nor options.
        if sku or price is not None or any(options):
            title = " / ".join(o for o in options if o and o != "Default Title")
            product.variants.append(VariantRecord(sku, title, price, len(product.variants) + 1))
    return list(products.values())


# --- orders -----------------------------------------------------------------------------------

ORDER_REQUIRED = ("Name", "Email", "Created at", "Lineitem quantity", "Lineitem name", "Lineitem price")
UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")


@dataclass
class LineItemRecord:
    sku: str
    title: str
    vendor: str
    quantity: int
    unit_price: Decimal
    discount: Decimal
    position: int


@dataclass
class OrderRecord:
    line: int
    name: str
    shopify_id: int | None
    email: str
    fields: dict[str, object]
    customer_fields: dict[str, str]
    line_items: list[LineItemRecord] = field(default_factory=list)
    # Set by the Shopify API import, which knows the customer; CSV orders link by email only.
    customer_shopify_id: int | None = None


def parse_orders(data: bytes, *, file_name: str, zone: zoneinfo.ZoneInfo) -> list[OrderRecord]:
    _header, rows = read_rows(data, file_name=file_name, required=ORDER_REQUIRED, kind=_("orders"))
    orders: dict[str, OrderRecord] = {}
    seen_ids: dict[int, str] = {}
    for row in rows:
        r = _RowReader(file_name, row)
        name = r.text("Name")
        if not name:
            raise r.error(_("The order name is empty."), "Name")
        order = orders.get(name)
        if order is None:
            order = _parse_order_header(r, name, zone)
            if order.shopify_id is not None:
                if order.shopify_id in seen_ids:
                    raise r.error(
                        _("Order id %(id)s is also used by %(name)s.")
                        % {"id": order.shopify_id, "name": seen_ids[order.shopify_id]},
                        "Id",
                    )
                seen_ids[order.shopify_id] = name
            orders[name] = order
        title = r.text("Lineitem name")
        if not title:
            raise r.error(_("The line item has no name."), "Lineitem name")
        order.line_items.append(
            LineItemRecord(
                sku=r.text("Lineitem sku"),
                title=title,
                vendor=r.text("Vendor"),
                quantity=r.typed("Lineitem quantity", parse_quantity),
                unit_price=r.typed("Lineitem price", parse_decimal),
                discount=r.typed("Lineitem discount", parse_decimal),
                position=len(order.line_items) + 1,
            )
        )
    return list(orders.values())


def _parse_order_header(r: _RowReader, name: str, zone: zoneinfo.ZoneInfo) -> OrderRecord:
    created_at = r.typed("Created at", parse_datetime, zone=zone)
    if created_at is None:
        raise r.error(_("The order has no creation time."), "Created at")
    email = r.text("Email")
    attributes = parse_note_attributes(r.row.values.get("Note Attributes", ""))
    discount_codes = [c.strip() for c in r.text("Discount Code").split(",") if c.strip()]
    fields: dict[str, object] = {
        "email": email,
        "created_at": created_at,
        "processed_at": r.typed("Paid at", parse_datetime, zone=zone),
        "currency": r.text("Currency").upper(),
        "subtotal": r.typed("Subtotal", parse_decimal),
        "shipping": r.typed("Shipping", parse_decimal),
        "tax": r.typed("Taxes", parse_decimal),
        "total": r.typed("Total", parse_decimal),
        "total_discounts": r.typed("Discount Amount", parse_decimal),
        "discount_code": discount_codes[0] if discount_codes else "",
        "refunded_amount": r.typed("Refunded Amount", parse_decimal),
        "financial_status": r.text("Financial Status").lower(),
        "fulfillment_status": r.text("Fulfillment Status").lower(),
        "cancelled_at": r.typed("Cancelled at", parse_datetime, zone=zone),
        "source_name": r.text("Source"),
        "tags": ", ".join(r.typed("Tags", parse_tags)),
        "landing_site": attributes.get("landing_site", ""),
        "referring_site": attributes.get("referring_site", ""),
    }
    for key in UTM_KEYS:
        fields[key] = attributes.get(key, "")
    billing_name = r.text("Billing Name") or r.text("Shipping Name")
    first, _sep, last = billing_name.partition(" ")
    country = (r.text("Billing Country") or r.text("Shipping Country")).upper()
    customer_fields = {
        "first_name": first,
        "last_name": last,
        "phone": r.text("Phone") or r.text("Billing Phone"),
        "country_code": country if len(country) == 2 else "",
        "province_code": normalize_province(r.text("Billing Province") or r.text("Shipping Province"), country),
        "city": r.text("Billing City") or r.text("Shipping City"),
        "zip": r.text("Billing Zip") or r.text("Shipping Zip"),
    }
    return OrderRecord(
        line=r.row.line,
        name=name,
        shopify_id=r.typed("Id", parse_shopify_id),
        email=email,
        fields=fields,
        customer_fields=customer_fields,
    )
