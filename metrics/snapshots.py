"""Daily segment snapshots and their backfill: one engine walks days forward for many segments.

For each day D (the end of D in the store's time zone) and every segment at once:

1. each member's counted orders up to the end of D are aggregated once into a temporary table;
2. each segment, in dependency order, is evaluated as of D (condition segments: the rule, with
   ``segments.rules``; lists: members added on or before D), its joins and leaves against D − 1
   are recorded and the members moved: for every customer, or only for the customers whose
   verdicts can move that day (below);
3. one grouped statement gives the KPIs, one the orders and revenue of the period; the snapshot
   rows are replaced.

Most verdicts do not move from one day to the next: a segment is evaluated only for the customers
whose verdicts can move (``segments.changes``: who ordered, signed up or was retagged in the
period, whose orders or sign-up a relative date sweeps past, and on a walk's first day whose data
or tags changed since the kept members were computed); everyone else keeps the day before's.
``ECPOWER_SNAPSHOTS_INCREMENTAL=0`` evaluates everyone every day;
tests/metrics/test_incremental_snapshots.py holds the two equal.

The daily run and a backfill are the same walk, so a backfilled day equals what the daily run
recorded that day (tests/metrics/test_backfill.py replays a month to show it). Days are daily for
the last ``DAILY_WINDOW_DAYS`` of a backfill and weekly before that.

``SnapshotMember`` + ``SnapshotCursor`` hold each segment's members as of its latest snapshot day
(a daily walk moves them in place, day by day) and the ``ChangeBaseline`` they were computed from.
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

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.db import IntegrityError, connection, transaction
from django.db.models import Max, Min
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.translation import gettext as _

from ecpower.commerce.bulk import pairs_diff, pairs_source, temp_table_empty
from ecpower.commerce.models import Customer, CustomerTagEvent, Order, Store
from metrics.models import SegmentSnapshot, SnapshotCursor, SnapshotLock, SnapshotMember, SnapshotSource
from segments import changes, rules
from segments.changes import Capture
from segments.models import ChangeBaseline, ChangePurpose, Membership, Segment, SegmentKind, SegmentVersion
from segments.selectors import dependency_order, dependency_waves, evaluation_context, store_today

logger = logging.getLogger(__name__)

DAILY_WINDOW_DAYS = 90
DEFAULT_HISTORY_DAYS = 730
WORK = "ecp_snapshot_members"  # every segment's members at the end of the day being walked
NEW = "ecp_snapshot_new"  # one segment's members, evaluated
CHANGES = "ecp_snapshot_changes"  # the day's joins (joined = 1) and leaves (joined = 0)
CHANGED = "ecp_snapshot_changed"  # customers who ordered, signed up or were retagged in the period
DIRTY = "ecp_snapshot_dirty"  # (bucket, customer): whose verdicts may move on the day, per set of edges
DIGESTS = "ecp_snapshot_digests"  # customers whose digest changed since the kept one (NULL: deleted)
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
    taken = changes.capture(store, ChangePurpose.SNAPSHOTS, DIGESTS) if keep_members or seed is None else None
    baseline: ChangeBaseline | None = None
    # A daily walk moves the kept members themselves, day by day; others work on a copy.
    work = SnapshotMember._meta.db_table if seed is None and keep_members else WORK
    with connection.cursor() as cursor:
        temp_table_empty(cursor, WORK)
        if seed is not None:
            _evaluate(cursor, store, live, seed, result, keys={}, work=work)
            unknown = set()  # the seed was evaluated with what this walk reads
            if connection.vendor == "postgresql":
                cursor.execute(f"ANALYZE {WORK}")
        else:
            if work == WORK:
                cursor.execute(
                    f"INSERT INTO {WORK} (store_id, segment_id, customer_id) SELECT store_id, segment_id, customer_id "
                    f"FROM {SnapshotMember._meta.db_table} WHERE segment_id IN ({_ids(live)})")
            numbers = dict(SnapshotCursor.objects.filter(segment__in=live).values_list("segment_id", "baseline"))
            baseline, unknown = changes.baseline_compare(store, taken, {s.pk: numbers.get(s.pk, 0) for s in live})
    previous_day = seed if seed is not None else days[0] - dt.timedelta(days=1)
    always = changes.evaluated_for_everyone(store, live) if settings.SNAPSHOTS_INCREMENTAL else {s.pk for s in live}
    total = len(days)
    for index, day in enumerate(days):
        live = [s for s in live if s.slug not in result.failed]
        if not live:
            break
        with transaction.atomic():
            with connection.cursor() as cursor:
                everyone = always | (unknown if index == 0 else set())
                everyone |= changes.referring_to(live, everyone)
                keys = {}
                if any(s.pk not in everyone for s in live):
                    _changed_fill(cursor, store, previous_day, day, taken, baseline if index == 0 else None)
                    keys = changes.dirty_fill(cursor, store, DIRTY, live, everyone,
                                              lambda _segment, before=previous_day, after=day: (before, after),
                                              (f"SELECT customer_id FROM {CHANGED}", []))
                notes = _evaluate(cursor, store, live, day, result, keys=keys, work=work)
                live = [s for s in live if s.slug not in result.failed]
                rows = _measure(cursor, store, live, day, previous_day, work=work)
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
                if work != WORK:  # the kept members moved with the day
                    SnapshotCursor.objects.filter(segment__in=live).update(date=day)
                    # Many moved (a first day): stale statistics would scan every kept member per segment.
                    changes.analyze_if_many(cursor, work, sum(r["joined"] + r["left"] for r in rows.values()))
                elif keep_members and index == total - 1:
                    _keep_members(cursor, store, live, day)
                if keep_members and index == total - 1:
                    number = changes.baseline_keep(cursor, store, taken)
                    SnapshotCursor.objects.filter(segment__in=live).update(baseline=number)
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
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {WORK} (store_id bigint, segment_id bigint, "
                       "customer_id bigint, PRIMARY KEY (segment_id, customer_id))")
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {CHANGES} "
                       "(segment_id bigint, customer_id bigint, joined integer, PRIMARY KEY (segment_id, customer_id))")
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {NEW} (customer_id bigint PRIMARY KEY)")
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {STATS} (customer_id bigint PRIMARY KEY, n integer, "
                       f"spent numeric, first_at {timestamp}, last_at {timestamp}, aov numeric, interval_days numeric)")


def _ids(segments: list[Segment]) -> str:
    return ", ".join(str(int(s.pk)) for s in segments) or "NULL"


# --- who may have changed (segments.changes) ----------------------------------------------------------


def _changed_fill(cursor, store: Store, previous_day: dt.date, day: dt.date, taken: Capture | None,
                  baseline: ChangeBaseline | None) -> None:
    """``CHANGED`` := customers who ordered, signed up or had a tag change between the ends of
    ``previous_day`` and ``day`` (and, with ``baseline``, whose data or tags changed since it)."""
    adapt = connection.ops.adapt_datetimefield_value
    zone = store.zone
    low = adapt(dt.datetime.combine(previous_day + dt.timedelta(days=1), dt.time.min, tzinfo=zone))
    high = adapt(dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min, tzinfo=zone))
    since, since_params = "", []
    if baseline is not None:
        sql, since_params = changes.changed_since_sql(store, taken, baseline)
        since = f" UNION {sql}"
    cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {CHANGED} (customer_id bigint PRIMARY KEY)")
    temp_table_empty(cursor, CHANGED)
    cursor.execute(
        f"""INSERT INTO {CHANGED} (customer_id)
            SELECT customer_id FROM {Order._meta.db_table}
            WHERE store_id = %s AND customer_id IS NOT NULL AND created_at >= %s AND created_at < %s
            UNION SELECT id FROM {Customer._meta.db_table}
            WHERE store_id = %s AND shopify_created_at >= %s AND shopify_created_at < %s
            UNION SELECT customer_id FROM {CustomerTagEvent._meta.db_table}
            WHERE store_id = %s AND occurred_at >= %s AND occurred_at < %s{since}""",
        [store.pk, low, high, store.pk, low, high, store.pk, low, high, *since_params])


# --- one day ------------------------------------------------------------------------------------------


def _evaluate(cursor, store: Store, segments: list[Segment], day: dt.date, result: SnapshotResult, *,
              keys: dict[int, int], work: str) -> dict[int, set[str]]:
    """Move ``work`` to each segment's members at the end of ``day``, recording the moves in ``CHANGES``.

    A segment with a key in ``keys`` is evaluated for its customers in ``DIRTY`` only; the others
    for every customer. Returns what was approximated.
    """
    temp_table_empty(cursor, CHANGES)
    _fill_stats(cursor, store, day)
    context = evaluation_context(store=store, as_of=day)
    context.facts_table = STATS
    done: dict[str, int] = {}  # segments are in dependency order: in_segment reads what is already in work
    notes: dict[int, set[str]] = {}

    def evaluated(slug: str) -> RawSQL | None:
        if slug not in done:
            return None
        context.notes |= notes.get(done[slug], set())  # what the referenced segment approximated
        return RawSQL(f"SELECT customer_id FROM {work} WHERE segment_id = %s", [done[slug]])

    context.evaluated = evaluated
    for group in _evaluation_groups(segments, keys):
        key = keys.get(group[0].pk)
        context.scope = RawSQL(changes.bucket_scope(DIRTY, key), []) if key else None
        if len(group) > 1:
            _evaluate_together(cursor, store, group, key, context, result, notes, work=work)
            done.update((segment.slug, segment.pk) for segment in group if segment.slug not in result.failed)
            continue
        segment = group[0]
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
        temp_table_empty(cursor, NEW)
        try:
            sql, params = members.query.sql_with_params()
        except EmptyResultSet:  # the rule provably matches nobody
            pass
        else:
            cursor.execute(f"INSERT INTO {NEW} (customer_id) SELECT m.* FROM ({sql}) m", params)
        if key is None and connection.vendor == "postgresql":
            cursor.execute(f"ANALYZE {NEW}")
        _changes_record(cursor, store, segment.pk, key, work=work)
        done[segment.slug] = segment.pk
    return notes


def _evaluation_groups(segments: list[Segment], keys: dict[int, int]) -> list[list[Segment]]:
    """``segments`` (in dependency order) in the order to evaluate them: condition segments of one wave
    that evaluate the same customers (one key in ``keys``) together, the others one by one."""
    groups: list[list[Segment]] = []
    for wave in dependency_waves(segments):
        together: dict[int, list[Segment]] = {}
        for segment in wave:
            key = keys.get(segment.pk)
            if key is not None and segment.kind == SegmentKind.CONDITION:
                together.setdefault(key, []).append(segment)
            else:
                groups.append([segment])
        groups.extend(together.values())
    return groups


def _evaluate_together(cursor, store: Store, segments: list[Segment], key: int, context: rules.EvaluationContext,
                       result: SnapshotResult, notes: dict[int, set[str]], *, work: str) -> None:
    """Evaluate condition segments for the customers of ``key`` in ``DIRTY`` in one statement (the customers
    read once: ``rules.verdicts_queryset``), then record their moves in ``CHANGES`` and apply them to
    ``work``, as ``_changes_record`` does for one segment."""
    trees, valid = [], []
    for segment in segments:
        try:
            trees.append(rules.check(segment.rule))
            valid.append(segment)
        except rules.InvalidRule as exc:
            result.failed[segment.slug] = str(exc)
            logger.warning("snapshot of segment %s skipped: %s", segment.pk, exc)
    if not valid:
        return
    context.notes = set()
    approximated: list[set[str]] = []
    found = rules.verdict_members(trees, context, notes=approximated)
    notes.update((segment.pk, approximation) for segment, approximation in zip(valid, approximated, strict=True))
    cursor.execute(f"SELECT segment_id, customer_id FROM {work} WHERE segment_id IN ({_ids(valid)}) "
                   f"AND customer_id IN ({changes.bucket_scope(DIRTY, key)})")
    joins, leaves = pairs_diff({segment.pk: chosen for segment, chosen in zip(valid, found, strict=True)},
                               cursor.fetchall())
    for pairs, joined in ((joins, 1), (leaves, 0)):
        if not pairs:
            continue
        source, params = pairs_source(cursor, pairs)
        cursor.execute(f"INSERT INTO {CHANGES} (segment_id, customer_id, joined) "
                       f"SELECT p.segment_id, p.customer_id, %s FROM {source}", [joined, *params])
        if joined:
            cursor.execute(f"INSERT INTO {work} (store_id, segment_id, customer_id) "
                           f"SELECT %s, p.segment_id, p.customer_id FROM {source}", [store.pk, *params])
        else:
            cursor.execute(f"DELETE FROM {work} WHERE (segment_id, customer_id) IN "
                           f"(SELECT p.segment_id, p.customer_id FROM {source})", params)


def _changes_record(cursor, store: Store, segment_id: int, key: int | None, *, work: str) -> None:
    """Diff ``NEW`` against the segment's rows of ``work`` into ``CHANGES`` (only for the customers of
    ``key`` in ``DIRTY`` when given), then apply it to ``work``."""
    scope = f" AND w.customer_id IN ({changes.bucket_scope(DIRTY, key)})" if key else ""
    cursor.execute(
        f"""INSERT INTO {CHANGES} (segment_id, customer_id, joined)
            SELECT %s, n.customer_id, 1 FROM {NEW} n WHERE NOT EXISTS (
                SELECT 1 FROM {work} w WHERE w.segment_id = %s AND w.customer_id = n.customer_id)""",
        [segment_id, segment_id])
    cursor.execute(
        f"""INSERT INTO {CHANGES} (segment_id, customer_id, joined)
            SELECT %s, w.customer_id, 0 FROM {work} w WHERE w.segment_id = %s{scope} AND NOT EXISTS (
                SELECT 1 FROM {NEW} n WHERE n.customer_id = w.customer_id)""",
        [segment_id, segment_id])
    cursor.execute(
        f"""DELETE FROM {work} WHERE segment_id = %s AND customer_id IN (
                SELECT customer_id FROM {CHANGES} WHERE segment_id = %s AND joined = 0)""",
        [segment_id, segment_id])
    cursor.execute(
        f"INSERT INTO {work} (store_id, segment_id, customer_id) "
        f"SELECT %s, segment_id, customer_id FROM {CHANGES} WHERE segment_id = %s AND joined = 1",
        [store.pk, segment_id])


def _fill_stats(cursor, store: Store, day: dt.date) -> None:
    """Every buyer's counted orders as of the end of ``day``: read by the day's rules and its KPIs.

    A customer whose last counted order is before the end of the day has, as of then, exactly the
    aggregates of their customer facts (the same counted orders, read in their current state), so
    those are copied; only the others, who ordered since (few, for a recent day), are aggregated
    from their orders. At a million customers aggregating every order took 10 s.
    """
    end = connection.ops.adapt_datetimefield_value(
        dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min, tzinfo=store.zone))
    customer = Customer._meta.db_table
    temp_table_empty(cursor, STATS)
    # Each buyer's average order value and purchase interval are worked out here, once per customer, and
    # summed per segment by _measure: the same values as before, without dividing once per membership
    # (at 1M customers, 5.8 M memberships: 7.4 s → 5.2 s for the KPI statement).
    orders = Order._meta.db_table
    if connection.vendor == "postgresql":
        # Each of them looked up by order_customer_cover: the planner, which counts a tenth of the
        # distinct buyers among the orders, hashed them against a scan of every order instead (at
        # 1M customers, 37,000 who ordered since: 2.5 s → 0.8 s).
        ordered_since = f"""
            SELECT c.id, a.n, a.spent, a.first_at, a.last_at
            FROM {customer} c CROSS JOIN LATERAL (
                SELECT COUNT(*) AS n, SUM(o.total - o.refunded_amount) AS spent, MIN(o.created_at) AS first_at,
                       MAX(o.created_at) AS last_at
                FROM {orders} o
                WHERE o.customer_id = c.id AND o.ordinal IS NOT NULL AND o.created_at < %s AND o.store_id = %s
            ) a
            WHERE c.store_id = %s AND c.last_order_at >= %s AND a.n > 0"""
        ordered_since_params = [end, store.pk, store.pk, end]
    else:
        ordered_since = f"""
            SELECT o.customer_id, COUNT(*), SUM(o.total - o.refunded_amount), MIN(o.created_at), MAX(o.created_at)
            FROM {orders} o
            WHERE o.store_id = %s AND o.ordinal IS NOT NULL AND o.created_at < %s AND o.customer_id IN (
                SELECT id FROM {customer} WHERE store_id = %s AND last_order_at >= %s)
            GROUP BY o.customer_id"""
        ordered_since_params = [store.pk, end, store.pk, end]
    cursor.execute(
        f"""INSERT INTO {STATS} (customer_id, n, spent, first_at, last_at, aov, interval_days)
            SELECT u.customer_id, u.n, u.spent, u.first_at, u.last_at, u.spent * 1.0 / u.n,
                   CASE WHEN u.n >= 2 THEN {days_between_sql('u.last_at', 'u.first_at')} / (u.n - 1) END
            FROM (
                SELECT id AS customer_id, orders_count AS n, amount_spent AS spent, first_order_at AS first_at,
                       last_order_at AS last_at
                FROM {customer}
                WHERE store_id = %s AND orders_count > 0 AND last_order_at < %s
                UNION ALL {ordered_since}
            ) u""",
        [store.pk, end, *ordered_since_params],
    )
    if connection.vendor == "postgresql":
        cursor.execute(f"ANALYZE {STATS}")


def days_between_sql(later: str, earlier: str) -> str:
    """SQL for the days (fractional) between two timestamp expressions, on PostgreSQL and SQLite."""
    if connection.vendor == "postgresql":
        return f"EXTRACT(EPOCH FROM ({later} - {earlier})) / 86400.0"
    return f"(julianday({later}) - julianday({earlier}))"


def _measure(cursor, store: Store, segments: list[Segment], day: dt.date, previous_day: dt.date, *, work: str
             ) -> dict[int, dict]:
    """Every KPI of every segment in ``work`` at the end of ``day``; the period is (previous_day, day]."""
    zone = store.zone
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min, tzinfo=zone)
    start = dt.datetime.combine(previous_day + dt.timedelta(days=1), dt.time.min, tzinfo=zone)
    orders = Order._meta.db_table
    end, start = connection.ops.adapt_datetimefield_value(end), connection.ops.adapt_datetimefield_value(start)
    # STATS holds every buyer's aggregates as of the end of ``day``: _evaluate filled it for this day.
    cursor.execute(
        f"""SELECT c.segment_id, COUNT(*), COUNT(s.customer_id), SUM(CASE WHEN s.n >= 2 THEN 1 ELSE 0 END),
                   SUM(s.spent), SUM(s.n), SUM(s.aov), SUM(s.interval_days)
            FROM {work} c LEFT JOIN {STATS} s ON s.customer_id = c.customer_id
            WHERE c.segment_id IN ({_ids(segments)})
            GROUP BY c.segment_id"""
    )
    kpis = {row[0]: row[1:] for row in cursor.fetchall()}
    # The period's orders per buyer first (a day: about 20,000 buyers at 1M customers), then the members
    # who are among them: the members stream past a small hash instead of being hashed themselves
    # (6.3 M of them: 3.25 s → 1.2 s).
    cursor.execute(
        f"""SELECT c.segment_id, SUM(p.n), SUM(p.revenue)
            FROM (SELECT o.customer_id, COUNT(*) AS n, SUM(o.total - o.refunded_amount) AS revenue
                  FROM {orders} o
                  WHERE o.store_id = %s AND o.ordinal IS NOT NULL AND o.created_at >= %s AND o.created_at < %s
                  GROUP BY o.customer_id) p
            JOIN {work} c ON c.customer_id = p.customer_id AND c.segment_id IN ({_ids(segments)})
            GROUP BY c.segment_id""",
        [store.pk, start, end],
    )
    activity = {row[0]: row[1:] for row in cursor.fetchall()}
    cursor.execute(f"SELECT segment_id, SUM(joined), SUM(1 - joined) FROM {CHANGES} GROUP BY segment_id")
    moves = {row[0]: (int(row[1]), int(row[2])) for row in cursor.fetchall()}
    joined = {pk: pair[0] for pk, pair in moves.items()}
    left = {pk: pair[1] for pk, pair in moves.items()}
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


def _keep_members(cursor, store: Store, segments: list[Segment], day: dt.date) -> None:
    """Make the kept members equal ``WORK``: only those who left or joined move (a day moves few)."""
    table = SnapshotMember._meta.db_table
    cursor.execute(
        f"DELETE FROM {table} WHERE segment_id IN ({_ids(segments)}) AND NOT EXISTS ("
        f"SELECT 1 FROM {WORK} c WHERE c.segment_id = {table}.segment_id AND c.customer_id = {table}.customer_id)")
    cursor.execute(
        f"INSERT INTO {table} (store_id, segment_id, customer_id) SELECT %s, c.segment_id, c.customer_id "
        f"FROM {WORK} c WHERE c.segment_id IN ({_ids(segments)}) AND NOT EXISTS (SELECT 1 FROM {table} k "
        f"WHERE k.segment_id = c.segment_id AND k.customer_id = c.customer_id)", [store.pk])
    changes.analyze_if_many(cursor, table, cursor.rowcount)
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
