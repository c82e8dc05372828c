"""Who may have changed: the customers whose verdicts can move between two evaluations of the rules.

Most verdicts do not move from one day to the next, so the daily recompute (``segments.services``)
and the daily snapshots (``metrics.snapshots``) evaluate a segment only for these customers and
keep everyone else's verdict. Between two evaluations, a customer's verdict can move only if

* a column rules read changed (``rules.CUSTOMER_COLUMNS``) or an ingest refreshed the customer's
  facts (``Customer.facts_refreshed_at``: orders arrived or changed, an edited line item too):
  found by comparing a digest of those columns with the one the last evaluation kept
  (``CustomerDigest``); new and deleted customers differ too;
* their tags changed: tag events recorded since the last evaluation (whatever day they are for);
* time moved one of the segment's relative dates past one of their orders or their sign-up
  (``last_order_date < -90d`` moves by one day: the orders of that day), see ``edges``;
* a segment it refers to moved for them.

(An evaluation as of a past day adds who ordered, signed up or was retagged in the days walked.)

Verdicts that can move without their customer changing need every customer evaluated
(``evaluated_for_everyone``): RFM groups (store quintiles), lists, tag rules of a store without tag
history (tags are then read as they are now), segments referring to those, and every segment once
the catalogue, the tag mappings or the start of the tag history changed (``catalogue_digest``).

``ChangeBaseline`` (one per store and purpose) and ``CustomerDigest`` hold what the kept verdicts
were computed from; each kept verdict names the baseline number it came from, and any other
number means "evaluate everyone".
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from django.db import connection
from django.db.models import Max, Min
from django.utils import timezone

from ecpower.commerce.bulk import temp_table_empty
from ecpower.commerce.models import Customer, CustomerTagEvent, Order, Product, ProductTag, Store
from segments import rules
from segments.models import ChangeBaseline, CustomerDigest, Segment, SegmentKind

# Rows written at once above which a table is re-analysed (analyze_if_many).
ANALYZE_AFTER = 50_000
# When more of the customers than this changed since the baseline (a whole-store rebuild of the facts),
# everyone is evaluated: collecting who may have moved would cost more than it saves.
MASS_CHANGE_SHARE = 0.25


@dataclass
class Capture:
    """What an evaluation reads besides orders and tags, captured when it starts."""

    purpose: str
    tag_event_id: int
    catalogue: str
    captured_at: dt.datetime
    digests: str  # the temporary table of customers whose digest differs from the baseline's (NULL: gone)
    changed: int  # rows in it
    customers: int  # the store's customers now

    @property
    def changed_share(self) -> float:
        return self.changed / max(self.customers, 1)


def digest_sql() -> str:
    """SQL (over ``Customer`` as ``c``) of one text per customer that changes when a column a rule reads
    changes, or an ingest refreshed the customer."""
    columns = (*rules.CUSTOMER_COLUMNS, "facts_refreshed_at")
    if connection.vendor == "postgresql":
        # A 64-bit hash of the values themselves (PostgreSQL 14+): two states of one customer colliding is a
        # 2^-64 chance per change. Scanning a million customers and hashing: 0.72 s this way, 1.15 s hashing
        # each column's text (hashtextextended over 17 casts), 3.7 s with md5; the scan alone 0.2 s.
        # Values, not text: a timestamp's text depends on the session's time zone, its hash does not.
        return f"CAST(hash_record_extended(ROW({', '.join(f'c.{column}' for column in columns)}), 0) AS TEXT)"
    return " || '|' || ".join(f"COALESCE(CAST(c.{column} AS TEXT), '~')" for column in columns)


def capture(store: Store, purpose: str, table: str) -> Capture:
    """Today's inputs; ``table`` (temporary) gets the customers whose digest differs from the kept one."""
    stored = CustomerDigest._meta.db_table
    customers = Customer._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} (customer_id bigint PRIMARY KEY, digest text)")
        temp_table_empty(cursor, table)
        if connection.vendor == "postgresql":
            # One pass over each side: a full join finds new, changed and deleted customers at once, and
            # the digest is computed before the join (``now`` is read twice, so it is materialized), so the
            # hash table holds an id and a digest rather than every column the digest reads. At 1M
            # customers 2.5 s → 1.6 s; with the text digest and a second pass for the deleted, 3.0 s. The
            # same pass counts the store's customers: counting them in a query of their own read them
            # again (on a slow day 3.2–3.3 s for the digests plus 0.7–0.8 s for the count, against
            # 3.3–3.4 s for both in this statement).
            cursor.execute(
                f"""WITH now AS (SELECT c.id, {digest_sql()} AS digest FROM {customers} c WHERE c.store_id = %s),
                    moved AS (
                        INSERT INTO {table} (customer_id, digest)
                        SELECT COALESCE(now.id, s.customer_id), now.digest
                        FROM now
                        FULL JOIN (SELECT customer_id, digest FROM {stored} WHERE store_id = %s AND purpose = %s) s
                            ON s.customer_id = now.id
                        WHERE now.id IS NULL OR s.digest IS NULL OR s.digest <> now.digest
                        RETURNING 1)
                    SELECT (SELECT COUNT(*) FROM moved), (SELECT COUNT(*) FROM now)""",
                [store.pk, store.pk, purpose])
            changed, everyone = cursor.fetchone()
            cursor.execute(f"ANALYZE {table}")
        else:  # FULL JOIN needs SQLite 3.39
            cursor.execute(
                f"""INSERT INTO {table} (customer_id, digest)
                    SELECT now.id, now.digest FROM (SELECT c.id, {digest_sql()} AS digest FROM {customers} c
                                                    WHERE c.store_id = %s) now
                    LEFT JOIN {stored} s ON s.store_id = %s AND s.purpose = %s AND s.customer_id = now.id
                    WHERE s.digest IS NULL OR s.digest <> now.digest
                    UNION ALL
                    SELECT s.customer_id, NULL FROM {stored} s WHERE s.store_id = %s AND s.purpose = %s
                    AND NOT EXISTS (SELECT 1 FROM {customers} c WHERE c.id = s.customer_id AND c.store_id = %s)""",
                [store.pk, store.pk, purpose, store.pk, purpose, store.pk])
            changed, everyone = cursor.rowcount, Customer.objects.filter(store=store).count()
    newest = CustomerTagEvent.objects.filter(store=store).aggregate(newest=Max("id"))["newest"] or 0
    return Capture(purpose=purpose, tag_event_id=newest, catalogue=catalogue_digest(store),
                   captured_at=timezone.now(), digests=table, changed=changed,
                   customers=everyone)


def catalogue_digest(store: Store) -> str:
    """Changes when what every customer's rule reads changes: products and their tags (products_purchased
    resolves them to ids), tag mappings (partner attributes), the start of the tag history."""
    from integrations.models import TagMapping

    digest = hashlib.sha256()
    for rows in (
        Product.objects.filter(store=store).order_by("pk").values_list("pk", "shopify_id", "product_type", "vendor"),
        ProductTag.objects.filter(store=store).order_by("product_id", "name").values_list("product_id", "name"),
        TagMapping.objects.filter(store=store).order_by("pk").values_list("pk", "attribute", "kind", "pattern"),
        [CustomerTagEvent.objects.filter(store=store).aggregate(start=Min("occurred_at"))["start"]],
    ):
        for row in rows:
            digest.update(repr(row).encode())
        digest.update(b"/")
    return digest.hexdigest()


def baseline_compare(store: Store, taken: Capture, numbers: dict[int, int]) -> tuple[ChangeBaseline | None, set[int]]:
    """The baseline to evaluate against, and which of the segments (id → the baseline number their kept
    verdicts came from) must be evaluated for everyone instead."""
    baseline = ChangeBaseline.objects.filter(store=store, purpose=taken.purpose).first()
    if baseline is None or baseline.catalogue != taken.catalogue or taken.changed_share > MASS_CHANGE_SHARE:
        return None, set(numbers)
    return baseline, {pk for pk, number in numbers.items() if number != baseline.number}


def analyze_if_many(cursor, table: str, rows: int) -> None:
    """Fresh planner statistics after ``rows`` rows of ``table`` were written at once (PostgreSQL)."""
    if rows >= ANALYZE_AFTER and connection.vendor == "postgresql":
        cursor.execute(f"ANALYZE {table}")


def baseline_keep(cursor, store: Store, taken: Capture) -> int:
    """Record ``taken`` as the store's baseline (digests and all); returns its number."""
    table = CustomerDigest._meta.db_table
    cursor.execute(f"DELETE FROM {table} WHERE store_id = %s AND purpose = %s AND customer_id IN ("
                   f"SELECT customer_id FROM {taken.digests} WHERE digest IS NULL)", [store.pk, taken.purpose])
    cursor.execute(
        f"""INSERT INTO {table} (store_id, purpose, customer_id, digest)
            SELECT %s, %s, customer_id, digest FROM {taken.digests} WHERE digest IS NOT NULL
            ON CONFLICT (store_id, purpose, customer_id) DO UPDATE SET digest = excluded.digest""",
        [store.pk, taken.purpose])
    # A first baseline: without statistics the next comparison plans a nested loop per customer.
    analyze_if_many(cursor, table, cursor.rowcount)
    current = ChangeBaseline.objects.filter(store=store, purpose=taken.purpose).values_list(
        "number", flat=True).first() or 0
    ChangeBaseline.objects.update_or_create(store=store, purpose=taken.purpose, defaults={
        "number": current + 1, "tag_event_id": taken.tag_event_id, "catalogue": taken.catalogue,
        "captured_at": taken.captured_at})
    return current + 1


def changed_since_sql(store: Store, taken: Capture, baseline: ChangeBaseline) -> tuple[str, list]:
    """SQL selecting the customers whose digest or tags changed since ``baseline``."""
    return (f"SELECT customer_id FROM {taken.digests} UNION SELECT customer_id FROM "
            f"{CustomerTagEvent._meta.db_table} WHERE store_id = %s AND id > %s", [store.pk, baseline.tag_event_id])


def evaluated_for_everyone(store: Store, segments: list[Segment]) -> set[int]:
    """Segments whose verdicts can move without their customer changing (see the module's text)."""
    without_history = not CustomerTagEvent.objects.filter(store=store).exists()
    return {
        s.pk for s in segments
        if s.kind == SegmentKind.LIST or rules.store_wide(s.rule)
        or (without_history and rules.reads_tags(s.rule))
    }


def referring_to(segments: list[Segment], everyone: set[int]) -> set[int]:
    """Segments (in dependency order) that refer, directly or not, to one in ``everyone`` or outside
    ``segments``."""
    by_slug = {s.slug: s for s in segments}
    found = set(everyone)
    for segment in segments:
        refs = rules.referenced_segments(segment.rule) if segment.rule else set()
        if any(ref not in by_slug or by_slug[ref].pk in found for ref in refs):
            found.add(segment.pk)
    return found - everyone


# The bucket of the customers who changed since the baseline: in every scoped segment's evaluation.
CHANGED_BUCKET = 1


def dirty_fill(cursor, store: Store, table: str, segments: list[Segment], everyone: set[int],
               sweeps: Callable[[Segment], tuple[dt.date, dt.date]], changed: tuple[str, list]) -> dict[int, int]:
    """Fill ``table`` (bucket, customer_id) with, per segment not in ``everyone``, the customers whose
    verdicts may move: ``changed`` (SQL selecting customer ids) plus whoever has an order (or a
    sign-up) in a span one of its relative dates sweeps between the two days ``sweeps(segment)``
    gives, or one of the segments it refers to does. Returns {segment id: its bucket}; a segment's
    customers are ``bucket_scope(table, bucket)``.

    The changed customers are written once (``CHANGED_BUCKET``), and each set of spans gets a bucket of
    the others it adds: with the changed copied into every bucket, eight buckets wrote eight copies of
    them (docs/performance.md).
    """
    zone = store.zone

    def start(of: dt.date) -> dt.datetime:
        return dt.datetime.combine(of, dt.time.min, tzinfo=zone)

    cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} "
                   "(bucket integer, customer_id bigint, PRIMARY KEY (bucket, customer_id))")
    temp_table_empty(cursor, table)
    spans: dict[str, tuple[frozenset, frozenset]] = {}
    buckets: dict[tuple[frozenset, frozenset], int] = {(frozenset(), frozenset()): CHANGED_BUCKET}
    chosen: dict[int, int] = {}
    adapt = connection.ops.adapt_datetimefield_value
    scoped = [s for s in segments if s.pk not in everyone and s.kind == SegmentKind.CONDITION]
    if scoped:
        changed_sql, changed_params = changed
        cursor.execute(f"INSERT INTO {table} (bucket, customer_id) SELECT DISTINCT {CHANGED_BUCKET}, "
                       f"u.customer_id FROM ({changed_sql}) u", changed_params)
    for segment in scoped:  # dependency order: references come first
        orders, added = edges(segment.rule, *sweeps(segment), start)
        for ref in rules.referenced_segments(segment.rule):
            orders, added = orders | spans[ref][0], added | spans[ref][1]
        spans[segment.slug] = (orders, added)
        if (orders, added) not in buckets:
            bucket = buckets[(orders, added)] = len(buckets) + 1
            parts, params = [], []
            for model, column, time_column, chosen_spans in ((Order, "customer_id", "created_at", orders),
                                                             (Customer, "id", "shopify_created_at", added)):
                if chosen_spans:
                    test = " OR ".join(f"({time_column} >= %s AND {time_column} < %s)" for _span in chosen_spans)
                    parts.append(f"SELECT {column} AS customer_id FROM {model._meta.db_table} WHERE store_id = %s "
                                 f"AND {column} IS NOT NULL AND ({test})")
                    params += [store.pk, *(adapt(bound) for span in sorted(chosen_spans) for bound in span)]
            cursor.execute(f"INSERT INTO {table} (bucket, customer_id) SELECT DISTINCT {bucket}, u.customer_id FROM ("
                           + " UNION ".join(parts) + f") u WHERE NOT EXISTS (SELECT 1 FROM {table} c "
                           f"WHERE c.bucket = {CHANGED_BUCKET} AND c.customer_id = u.customer_id)", params)
        chosen[segment.pk] = buckets[(orders, added)]
    if connection.vendor == "postgresql":
        cursor.execute(f"ANALYZE {table}")
    return chosen


def bucket_scope(table: str, bucket: int) -> str:
    """SQL selecting the customers a segment of ``bucket`` (``dirty_fill``) evaluates."""
    if bucket == CHANGED_BUCKET:
        return f"SELECT customer_id FROM {table} WHERE bucket = {CHANGED_BUCKET}"
    return f"SELECT customer_id FROM {table} WHERE bucket IN ({CHANGED_BUCKET}, {int(bucket)})"


def dirty_share(cursor, table: str, buckets: dict[int, int], customers: int) -> float:
    """The mean share of the store's customers the segments of ``buckets`` would evaluate."""
    if not buckets:
        return 0.0
    cursor.execute(f"SELECT bucket, COUNT(*) FROM {table} GROUP BY bucket")
    sizes = dict(cursor.fetchall())
    changed = sizes.get(CHANGED_BUCKET, 0)
    evaluated = (changed + (sizes.get(bucket, 0) if bucket != CHANGED_BUCKET else 0) for bucket in buckets.values())
    return sum(evaluated) / len(buckets) / max(customers, 1)


def edges(tree: dict, before: dt.date, after: dt.date, start: Callable[[dt.date], dt.datetime]
          ) -> tuple[frozenset, frozenset]:
    """Time spans the rule's relative dates sweep from evaluating on ``before`` to evaluating on ``after``,
    for order times and for sign-up times: an order inside one may pass a test on one day and not
    on the other."""
    orders, added = set(), set()
    for name, value, op in rules.date_tests(tree or {}):
        if rules.parse_date_value(value)[0] == "absolute":
            continue
        low, high = sorted((rules.resolve_date(value, before), rules.resolve_date(value, after)))
        # A test's bound is the start of its day (>=, <) or of the next (>, <=); = and BETWEEN use both.
        for offset in {">=": (0,), "<": (0,), ">": (1,), "<=": (1,)}.get(op, (0, 1)):
            if low < high:
                span = (start(low + dt.timedelta(days=offset)), start(high + dt.timedelta(days=offset)))
                (added if name == "customer_added_date" else orders).add(span)
    return frozenset(orders), frozenset(added)
