"""Daily segment snapshots and their backfill: one engine walks days forward for many segments.

For each day D (the end of D in the store's time zone) and every segment at once:

1. members as of D go into a temporary table (condition segments: the rule evaluated as of D,
   with ``segments.rules``; lists: members added on or before D);
2. each member's counted orders up to the end of D are aggregated once into another;
3. one grouped statement gives the KPIs, one the orders and revenue of the period, two the joins
   and leaves against the previous day's members; the snapshot rows are replaced.

The daily run and a backfill are the same walk, so a backfilled day equals what the daily run
recorded that day (tests/metrics/test_backfill.py replays a month to show it). Days are daily for
the last ``DAILY_WINDOW_DAYS`` of a backfill and weekly before that.

``SnapshotMember`` + ``SnapshotCursor`` hold each segment's members as of its latest snapshot day,
so the next day's run diffs against them; both are written with that day's snapshots.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from django.core.exceptions import EmptyResultSet
from django.db import IntegrityError, connection, transaction
from django.db.models import Max, Min
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.translation import gettext as _

from ecpower.commerce.models import Order, Store
from metrics.models import SegmentSnapshot, SnapshotCursor, SnapshotLock, SnapshotMember, SnapshotSource
from segments import rules
from segments.models import Membership, Segment, SegmentKind, SegmentVersion
from segments.selectors import dependency_order, evaluation_context, store_today

logger = logging.getLogger(__name__)

DAILY_WINDOW_DAYS = 90
DEFAULT_HISTORY_DAYS = 730
CURRENT = "ecp_snapshot_current"
PREVIOUS = "ecp_snapshot_previous"
STATS = "ecp_snapshot_stats"
CENT = Decimal("0.01")

Progress = Callable[[str, int, int], None]


@dataclass
class SnapshotResult:
    days: int = 0
    snapshots: int = 0
    segments: int = 0
    first: dt.date | None = None
    last: dt.date | None = None
    approximate: dict[str, str] = field(default_factory=dict)  # slug → why
    failed: dict[str, str] = field(default_factory=dict)  # slug → error

    def as_dict(self) -> dict:
        return {"days": self.days, "snapshots": self.snapshots, "segments": self.segments,
                "first": self.first.isoformat() if self.first else None,
                "last": self.last.isoformat() if self.last else None,
                "approximate": self.approximate, "failed": self.failed}


def last_closed_day(store: Store) -> dt.date:
    """Yesterday in the store's time zone: the latest day whose orders are all in."""
    return store_today(store) - dt.timedelta(days=1)


def history_start(store: Store, until: dt.date) -> dt.date:
    """Where a backfill starts by default: the store's first counted order, at most two years back."""
    first = Order.objects.filter(store=store, ordinal__isnull=False).aggregate(first=Min("created_at"))["first"]
    earliest = until - dt.timedelta(days=DEFAULT_HISTORY_DAYS)
    if first is None:
        return until
    return max(first.astimezone(store.zone).date(), earliest)


def snapshot_days(since: dt.date, until: dt.date, daily_days: int = DAILY_WINDOW_DAYS) -> list[dt.date]:
    """The days a backfill records: daily for the last ``daily_days`` up to ``until``, weekly before."""
    if since > until:
        return []
    days, day = [], until
    while day >= since:
        days.append(day)
        step = 1 if (until - day).days < daily_days else 7
        day -= dt.timedelta(days=step)
    return days[::-1]


# --- the store's snapshot lock ------------------------------------------------------------------------

LOCK_STALE_AFTER = dt.timedelta(minutes=15)
LOCK_WAIT = dt.timedelta(minutes=30)


class SnapshotsBusy(Exception):
    """Another worker has been writing this store's snapshots for longer than we wait."""


@contextmanager
def store_lock(store: Store, *, wait: dt.timedelta = LOCK_WAIT, poll_seconds: float = 2.0):
    """Hold the store's snapshot lock (waiting up to ``wait`` for another holder); re-entrant.

    A backfill and the daily run's snapshot step both rebuild histories; written at once they
    would do the work twice and, on PostgreSQL, collide on the same day's rows.
    """
    held = _held_here()
    if store.pk in held:
        yield
        return
    holder = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"[:100]
    deadline = time.monotonic() + wait.total_seconds()
    while not _acquire(store, holder):
        if time.monotonic() > deadline:
            raise SnapshotsBusy(_("Another job is writing the snapshots of %(store)s.") % {"store": store})
        time.sleep(poll_seconds)
    held.add(store.pk)
    try:
        yield
    finally:
        held.discard(store.pk)
        SnapshotLock.objects.filter(store=store, holder=holder).delete()


_local = threading.local()


def _held_here() -> set[int]:
    """Stores whose lock this thread holds (so nested entry points do not wait for themselves)."""
    if not hasattr(_local, "stores"):
        _local.stores = set()
    return _local.stores


def _acquire(store: Store, holder: str) -> bool:
    now = timezone.now()
    if SnapshotLock.objects.filter(store=store, heartbeat_at__lt=now - LOCK_STALE_AFTER).update(
            holder=holder, heartbeat_at=now):
        return True  # its holder died: taken over
    try:
        with transaction.atomic():
            SnapshotLock.objects.create(store=store, holder=holder, heartbeat_at=now)
        return True
    except IntegrityError:
        return False


def _lock_heartbeat(store: Store) -> None:
    SnapshotLock.objects.filter(store=store).update(heartbeat_at=timezone.now())


# --- entry points ---------------------------------------------------------------------------------


def history_rebuild(*, store: Store, segments: Iterable[Segment] | None = None, since: dt.date | None = None,
                    until: dt.date | None = None, progress: Progress | None = None) -> SnapshotResult:
    """Recompute the history of ``segments`` (default: all of the store's) from ``since`` to ``until``.

    Replaces their snapshots in that range (a changed rule gets a history that matches it) and
    leaves their members as of ``until`` for the next daily run.
    """
    with store_lock(store):
        return _history_rebuild(store, segments, since, until, progress)


def _history_rebuild(store, segments, since, until, progress) -> SnapshotResult:
    until = until or last_closed_day(store)
    chosen = _segments(store, segments)
    conditions = [s for s in chosen if s.kind == SegmentKind.CONDITION]
    lists = [s for s in chosen if s.kind == SegmentKind.LIST]
    since = since or history_start(store, until)
    result = SnapshotResult()
    if conditions:
        SegmentSnapshot.objects.filter(segment__in=conditions, date__gte=since).delete()
        days = snapshot_days(since, until)
        if days:
            seed = days[0] - (days[1] - days[0] if len(days) > 1 else dt.timedelta(days=1))
            _walk(store, conditions, days, seed=seed, source=SnapshotSource.BACKFILL, result=result,
                  progress=progress)
    for segment in lists:  # a list has no history before it was made
        start = max(since, segment.created_at.astimezone(store.zone).date())
        SegmentSnapshot.objects.filter(segment=segment, date__gte=start).delete()
        days = [start + dt.timedelta(days=n) for n in range((until - start).days + 1)]
        if days:
            _walk(store, [segment], days, seed=start - dt.timedelta(days=1), source=SnapshotSource.BACKFILL,
                  result=result, progress=progress)
    return result


def snapshots_update(*, store: Store, until: dt.date | None = None, progress: Progress | None = None
                     ) -> SnapshotResult:
    """Bring every segment's snapshots up to ``until`` (default: yesterday), one day at a time.

    Segments with snapshots continue from their last day (a run missed while down is caught up
    here, day by day); segments without (new, or a crashed backfill) get their history rebuilt.
    """
    with store_lock(store):
        return _snapshots_update(store, until, progress)


def _snapshots_update(store, until, progress) -> SnapshotResult:
    until = until or last_closed_day(store)
    segments = _segments(store, None)
    versions = rule_versions(segments)
    cursors = {
        segment_id: date
        for segment_id, date, version in SnapshotCursor.objects.filter(segment__in=segments).values_list(
            "segment_id", "date", "version")
        if version == versions.get(segment_id, 0)  # a changed rule gets its whole history again
    }
    fresh = [s for s in segments if s.pk not in cursors]
    result = SnapshotResult()
    by_start: dict[dt.date, list[Segment]] = {}
    for segment in segments:
        if segment.pk in cursors and cursors[segment.pk] < until:
            by_start.setdefault(cursors[segment.pk] + dt.timedelta(days=1), []).append(segment)
    for start, group in sorted(by_start.items()):
        days = [start + dt.timedelta(days=n) for n in range((until - start).days + 1)]
        _walk(store, group, days, seed=None, source=SnapshotSource.DAILY, result=result, progress=progress)
    if fresh:
        rebuilt = history_rebuild(store=store, segments=fresh, until=until, progress=progress)
        result.snapshots += rebuilt.snapshots
        result.days = max(result.days, rebuilt.days)
        result.approximate.update(rebuilt.approximate)
        result.failed.update(rebuilt.failed)
        result.first = min(filter(None, [result.first, rebuilt.first]), default=None)
        result.last = max(filter(None, [result.last, rebuilt.last]), default=None)
    result.segments = len(segments)
    return result


def snapshot_day(*, store: Store, day: dt.date, progress: Progress | None = None) -> SnapshotResult:
    """Recompute every segment's snapshot of one past ``day`` (members of the day before as the seed).

    The members kept for the next daily run move only when ``day`` is past their cursor.
    """
    with store_lock(store):
        return _snapshot_day(store, day, progress)


def _snapshot_day(store, day, progress) -> SnapshotResult:
    segments = _segments(store, None)
    result = SnapshotResult()
    _walk(store, segments, [day], seed=day - dt.timedelta(days=1), source=SnapshotSource.DAILY, result=result,
          progress=progress, keep_members=False)
    caught_up = SnapshotCursor.objects.filter(segment__in=segments, date__gte=day).count()
    if caught_up < len(segments):
        snapshots_update(store=store, until=day, progress=progress)
    result.segments = len(segments)
    return result


def rule_versions(segments: Iterable[Segment]) -> dict[int, int]:
    """{segment id: its latest rule version} (lists have none: 0)."""
    return dict(SegmentVersion.objects.filter(segment__in=list(segments)).values("segment_id").annotate(
        n=Max("number")).values_list("segment_id", "n"))


def stale_segments(store: Store) -> list[Segment]:
    """Segments whose history is missing or was computed with an older rule."""
    segments = _segments(store, None)
    versions = rule_versions(segments)
    cursors = dict(SnapshotCursor.objects.filter(segment__in=segments).values_list("segment_id", "version"))
    return [s for s in segments if cursors.get(s.pk) != versions.get(s.pk, 0)]


def _segments(store: Store, segments: Iterable[Segment] | None) -> list[Segment]:
    if segments is None:
        segments = Segment.objects.filter(store=store)
    chosen = [s for s in segments if s.store_id == store.pk]
    ordered, cyclic = dependency_order(chosen)
    return ordered  # segments in a reference cycle cannot be evaluated; recompute reports them


# --- the walk ---------------------------------------------------------------------------------------


def _walk(store: Store, segments: list[Segment], days: list[dt.date], *, seed: dt.date | None, source: str,
          result: SnapshotResult, progress: Progress | None, keep_members: bool = True) -> None:
    """Record snapshots of ``segments`` for ``days`` (ascending), diffing each day against the one before.

    ``seed``: a day whose members are evaluated first (not recorded) to diff the first day against;
    without it, the members kept by the previous run are used.
    """
    _create_tables()
    live = list(segments)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {PREVIOUS}")
        if seed is not None:
            _evaluate(cursor, store, live, seed, result, into=PREVIOUS)
        else:
            cursor.execute(
                f"INSERT INTO {PREVIOUS} (segment_id, customer_id) SELECT segment_id, customer_id "
                f"FROM {SnapshotMember._meta.db_table} WHERE segment_id IN ({_ids(live)})")
    previous_day = seed if seed is not None else days[0] - dt.timedelta(days=1)
    total = len(days)
    for index, day in enumerate(days):
        live = [s for s in live if s.slug not in result.failed]
        if not live:
            break
        with transaction.atomic():
            with connection.cursor() as cursor:
                notes = _evaluate(cursor, store, live, day, result, into=CURRENT)
                live = [s for s in live if s.slug not in result.failed]
                rows = _measure(cursor, store, live, day, previous_day)
                SegmentSnapshot.objects.filter(segment__in=live, date=day).delete()
                SegmentSnapshot.objects.bulk_create([
                    SegmentSnapshot(store=store, segment=s, date=day, period_days=(day - previous_day).days,
                                    approximate=bool(notes.get(s.pk)), source=source, **rows[s.pk])
                    for s in live
                ])
                for segment in live:
                    if notes.get(segment.pk):
                        result.approximate[segment.slug] = ", ".join(sorted(notes[segment.pk]))
                result.snapshots += len(live)
                if keep_members and index == total - 1:
                    _keep_members(cursor, store, live, day)
                if index < total - 1:  # the next day diffs against this one
                    cursor.execute(f"DELETE FROM {PREVIOUS}")
                    cursor.execute(f"INSERT INTO {PREVIOUS} (segment_id, customer_id) "
                                   f"SELECT segment_id, customer_id FROM {CURRENT}")
        previous_day = day
        _lock_heartbeat(store)
        result.days += 1
        result.first = min(filter(None, [result.first, day]))
        result.last = max(filter(None, [result.last, day]))
        if progress:
            progress("snapshots", index + 1, total)


def _create_tables() -> None:
    timestamp = "timestamptz" if connection.vendor == "postgresql" else "text"
    with connection.cursor() as cursor:
        for table in (CURRENT, PREVIOUS):
            cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} "
                           "(segment_id bigint, customer_id bigint, PRIMARY KEY (segment_id, customer_id))")
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {STATS} (customer_id bigint PRIMARY KEY, n integer, "
                       f"spent numeric, first_at {timestamp}, last_at {timestamp})")


def _ids(segments: list[Segment]) -> str:
    return ", ".join(str(int(s.pk)) for s in segments) or "NULL"


def _evaluate(cursor, store: Store, segments: list[Segment], day: dt.date, result: SnapshotResult, *, into: str
              ) -> dict[int, set[str]]:
    """Fill ``into`` with each segment's members at the end of ``day``; returns what was approximated."""
    cursor.execute(f"DELETE FROM {into}")
    context = evaluation_context(store=store, as_of=day)
    _fill_stats(cursor, store, day)
    context.facts_table = STATS
    done: dict[str, int] = {}  # segments are in dependency order: in_segment reads what is already in ``into``

    def evaluated(slug: str) -> RawSQL | None:
        if slug not in done:
            return None
        context.notes |= notes.get(done[slug], set())  # what the referenced segment approximated
        return RawSQL(f"SELECT customer_id FROM {into} WHERE segment_id = %s", [done[slug]])

    context.evaluated = evaluated
    notes: dict[int, set[str]] = {}
    for segment in segments:
        if segment.kind == SegmentKind.LIST:
            members = Membership.objects.filter(segment=segment, since__lte=day).values("customer_id")
        else:
            context.notes = set()
            try:
                members = rules.members_queryset(rules.check(segment.rule), context).values("id")
            except rules.InvalidRule as exc:
                result.failed[segment.slug] = str(exc)
                logger.warning("snapshot of segment %s skipped: %s", segment.pk, exc)
                continue
            notes[segment.pk] = set(context.notes)
        try:
            sql, params = members.query.sql_with_params()
        except EmptyResultSet:  # the rule provably matches nobody
            continue
        cursor.execute(f"INSERT INTO {into} (segment_id, customer_id) SELECT %s, m.* FROM ({sql}) m",
                       [segment.pk, *params])
        done[segment.slug] = segment.pk
    if connection.vendor == "postgresql":
        cursor.execute(f"ANALYZE {into}")
    return notes


def _fill_stats(cursor, store: Store, day: dt.date) -> None:
    """Every buyer's counted orders as of the end of ``day``: read by the day's rules and its KPIs."""
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min, tzinfo=store.zone)
    cursor.execute(f"DELETE FROM {STATS}")
    cursor.execute(
        f"""INSERT INTO {STATS} (customer_id, n, spent, first_at, last_at)
            SELECT o.customer_id, COUNT(*), SUM(o.total - o.refunded_amount), MIN(o.created_at), MAX(o.created_at)
            FROM {Order._meta.db_table} o
            WHERE o.store_id = %s AND o.customer_id IS NOT NULL AND o.ordinal IS NOT NULL AND o.created_at < %s
            GROUP BY o.customer_id""",
        [store.pk, connection.ops.adapt_datetimefield_value(end)],
    )
    if connection.vendor == "postgresql":
        cursor.execute(f"ANALYZE {STATS}")


def days_between_sql(later: str, earlier: str) -> str:
    """SQL for the days (fractional) between two timestamp expressions, on PostgreSQL and SQLite."""
    if connection.vendor == "postgresql":
        return f"EXTRACT(EPOCH FROM ({later} - {earlier})) / 86400.0"
    return f"(julianday({later}) - julianday({earlier}))"


def _measure(cursor, store: Store, segments: list[Segment], day: dt.date, previous_day: dt.date) -> dict[int, dict]:
    """Every KPI of every segment in ``CURRENT`` at the end of ``day``; the period is (previous_day, day]."""
    zone = store.zone
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min, tzinfo=zone)
    start = dt.datetime.combine(previous_day + dt.timedelta(days=1), dt.time.min, tzinfo=zone)
    orders = Order._meta.db_table
    end, start = connection.ops.adapt_datetimefield_value(end), connection.ops.adapt_datetimefield_value(start)
    # STATS holds every buyer's aggregates as of the end of ``day``: _evaluate filled it for this day.
    cursor.execute(
        f"""SELECT c.segment_id, COUNT(*), COUNT(s.customer_id), SUM(CASE WHEN s.n >= 2 THEN 1 ELSE 0 END),
                   SUM(s.spent), SUM(s.n), SUM(s.spent * 1.0 / s.n),
                   SUM(CASE WHEN s.n >= 2 THEN {days_between_sql('s.last_at', 's.first_at')} / (s.n - 1) END)
            FROM {CURRENT} c LEFT JOIN {STATS} s ON s.customer_id = c.customer_id
            GROUP BY c.segment_id"""
    )
    kpis = {row[0]: row[1:] for row in cursor.fetchall()}
    cursor.execute(
        f"""SELECT c.segment_id, COUNT(o.id), SUM(o.total - o.refunded_amount)
            FROM {CURRENT} c JOIN {orders} o ON o.customer_id = c.customer_id
            WHERE o.store_id = %s AND o.ordinal IS NOT NULL AND o.created_at >= %s AND o.created_at < %s
            GROUP BY c.segment_id""",
        [store.pk, start, end],
    )
    activity = {row[0]: row[1:] for row in cursor.fetchall()}
    joined = _diff_counts(cursor, CURRENT, PREVIOUS)
    left = _diff_counts(cursor, PREVIOUS, CURRENT)
    rows = {}
    for segment in segments:
        members, buyers, repeaters, spent, n, aov_sum, interval_sum = kpis.get(segment.pk, (0, 0, 0, 0, 0, 0, None))
        spent, n, aov_sum = _dec(spent), int(n or 0), _dec(aov_sum)
        period_orders, revenue = activity.get(segment.pk, (0, 0))
        rows[segment.pk] = {
            "members": members,
            "joined": joined.get(segment.pk, 0),
            "left": left.get(segment.pk, 0),
            "orders": int(period_orders or 0),
            "revenue": _round(_dec(revenue)),
            "buyers": buyers,
            "repeat_rate": (Decimal(repeaters) / members).quantize(Decimal("0.0001"), ROUND_HALF_UP)
            if members else Decimal(0),
            "ltv": _round(spent / members) if members else Decimal(0),
            "aov_customer": _round(aov_sum / buyers) if buyers else None,
            "aov_order": _round(spent / n) if n else None,
            "avg_orders": _round(Decimal(n) / members) if members else Decimal(0),
            "purchase_interval_days": (_dec(interval_sum) / repeaters).quantize(Decimal("0.1"), ROUND_HALF_UP)
            if repeaters else None,
        }
    return rows


def _diff_counts(cursor, table: str, other: str) -> dict[int, int]:
    cursor.execute(
        f"""SELECT t.segment_id, COUNT(*) FROM {table} t WHERE NOT EXISTS (
                SELECT 1 FROM {other} o WHERE o.segment_id = t.segment_id AND o.customer_id = t.customer_id)
            GROUP BY t.segment_id"""
    )
    return dict(cursor.fetchall())


def _keep_members(cursor, store: Store, segments: list[Segment], day: dt.date) -> None:
    """Make the kept members equal today's: only those who left or joined move (a day moves few)."""
    table = SnapshotMember._meta.db_table
    cursor.execute(
        f"DELETE FROM {table} WHERE segment_id IN ({_ids(segments)}) AND NOT EXISTS ("
        f"SELECT 1 FROM {CURRENT} c WHERE c.segment_id = {table}.segment_id AND c.customer_id = {table}.customer_id)")
    cursor.execute(
        f"INSERT INTO {table} (store_id, segment_id, customer_id) SELECT %s, c.segment_id, c.customer_id "
        f"FROM {CURRENT} c WHERE NOT EXISTS (SELECT 1 FROM {table} k "
        f"WHERE k.segment_id = c.segment_id AND k.customer_id = c.customer_id)", [store.pk])
    versions = rule_versions(segments)
    for segment in segments:
        SnapshotCursor.objects.update_or_create(
            segment=segment, defaults={"store": store, "date": day, "version": versions.get(segment.pk, 0)})


def _dec(value) -> Decimal:
    if value is None:
        return Decimal(0)
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _round(value: Decimal) -> Decimal:
    return value.quantize(CENT, ROUND_HALF_UP)


def approximate_note(reason: str) -> str:
    """What an ``approximate`` flag means, for the admin and the CLI."""
    return {
        "tags_before_history": _("customer tags before the store's tag history starts are read as they were "
                                 "on its first day"),
        "tags_without_history": _("the store has no tag history; customer tags are read as they are today"),
    }.get(reason, reason)
