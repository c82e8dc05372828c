"""Writes about segments: define, version, recompute membership.

Recompute is one set-based evaluation of the rule into a temporary table, then a diff against
stored membership in four statements (leaves recorded and removed, joins recorded and added).
Nothing changes when nothing changed; a segment is claimed atomically so two workers never
compute it at once; status, duration, counts and errors are recorded on the segment.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.db import connection, transaction
from django.db.models import F, Max, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.text import slugify
from django.utils.translation import gettext as _

from ecpower.commerce.bulk import pairs_diff, pairs_source, temp_table_empty
from ecpower.commerce.models import Store
from ecpower.commerce.services import customers_scope
from segments import changes, rules
from segments.models import (
    ChangePurpose,
    Membership,
    MembershipEvent,
    MembershipEventKind,
    Segment,
    SegmentKind,
    SegmentStatus,
    SegmentVersion,
)
from segments.query_language import parse, to_text
from segments.selectors import (
    dependency_order,
    dependency_waves,
    evaluation_context,
    find_cycle,
    segment_exists_checker,
    store_today,
)

logger = logging.getLogger(__name__)

# A segment marked running for longer than this is assumed abandoned (worker killed) and reclaimed.
CLAIM_STALE_AFTER = dt.timedelta(minutes=30)
STAGING_TABLE = "ecp_segment_staging"
# Customers an incremental recompute is limited to (customers_segments_recompute).
SCOPE_TABLE = "ecp_customer_scope"
# From this many customers on, an incremental recompute runs segments side by side on several
# connections: each loads the scope once (docs/performance.md, "Incremental").
SCOPED_SIDE_BY_SIDE_MIN = 1000
# The daily recompute (store_segments_refresh): customers whose digest changed, and whom each segment
# evaluates (segments.changes).
DIGESTS_TABLE = "ecp_recompute_digests"
DIRTY_TABLE = "ecp_recompute_dirty"
# Above this mean share of the store's customers to evaluate per segment, the daily recompute evaluates
# everyone instead, side by side on several connections: at 1,000,000 customers, evaluating 5–8 % of
# them segment after segment took 44.9 s, everyone on two connections 37.1 s (docs/performance.md).
SCOPED_SHARE_MAX = 0.04
# The same limit when the daily run's snapshots take the other core meanwhile (metrics.pipeline): one
# connection evaluating scoped leaves it to them. At 1,000,000 customers with 5.1 % changed, next to
# the snapshots: scoped 31.7 s (snapshots 52.0 s), everyone on two connections 59.2 s (snapshots 74.2 s).
SCOPED_SHARE_MAX_BESIDE_SNAPSHOTS = 0.10
# A whole store's recompute writes its line summary to a table named with the time it was written
# (``line_summary_table``) and drops it when done; one older than this was left by a killed worker and
# is dropped by the next recompute (``line_summaries_sweep``). No recompute comes near it: at 1,000,000
# customers one takes 30–90 s.
LINE_SUMMARY_ABANDONED_AFTER = dt.timedelta(hours=6)


class SegmentBusy(Exception):
    """Another worker is computing this segment right now."""


# ---------------------------------------------------------------------------------------------
# Definitions


def rule_from_input(*, store: Store, query: str | None = None, rule: dict | None = None, slug: str = "") -> dict:
    """A checked, normalised rule from text or JSON; refuses unknown segments and cycles."""
    known = segment_exists_checker(store)

    def exists(name: str) -> bool:  # a segment referring to itself is reported as a cycle below
        return name == slug or known(name)

    if query is not None and query.strip():
        tree = parse(query, segment_exists=exists)
    elif rule is not None:
        tree = rules.check(rule, segment_exists=exists)
    else:
        raise rules.InvalidRule([rules.RuleProblem("", _("Give a query or a rule."))])
    if slug:
        cycle = find_cycle(store=store, slug=slug, tree=tree)
        if cycle:
            raise rules.InvalidRule(
                [rules.RuleProblem("", _("Segments would refer to each other in a cycle: %(cycle)s.")
                                   % {"cycle": " → ".join(cycle)})]
            )
    return tree


def unique_slug(store: Store, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``… whichever the store does not use yet."""
    slug, n = base, 2
    while Segment.objects.filter(store=store, slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


def slug_for(store: Store, name: str, *, kind: str = "segment") -> str:
    """A free slug made from ``name``; names without Latin letters (日本語) get ``kind-YYYYMMDD``."""
    base = slugify(name)[:90] or f"{kind}-{timezone.localtime().strftime('%Y%m%d')}"
    return unique_slug(store, base)


@transaction.atomic
def segment_create(
    *,
    store: Store,
    name: str,
    slug: str = "",
    query: str | None = None,
    rule: dict | None = None,
    description: str = "",
    shopify_tag: str = "",
    user=None,
) -> Segment:
    slug = slug or slug_for(store, name)
    if Segment.objects.filter(store=store, slug=slug).exists():
        raise rules.InvalidRule([rules.RuleProblem("slug", _("A segment with the slug %(slug)r already exists.")
                                                   % {"slug": slug})])
    tree = rule_from_input(store=store, query=query, rule=rule, slug=slug)
    segment = Segment.objects.create(
        store=store, name=name, slug=slug, description=description, kind=SegmentKind.CONDITION,
        rule=tree, query=to_text(tree), shopify_tag=shopify_tag, created_by=user,
    )
    SegmentVersion.objects.create(segment=segment, number=1, rule=tree, query=segment.query, created_by=user)
    return segment


@transaction.atomic
def segment_update(
    *, segment: Segment, query: str | None = None, rule: dict | None = None, user=None, **fields
) -> Segment:
    """Change a segment; a changed rule becomes a new ``SegmentVersion``."""
    segment = Segment.objects.select_for_update().get(pk=segment.pk)
    if segment.kind == SegmentKind.LIST and (query is not None or rule is not None):
        raise rules.InvalidRule([rules.RuleProblem("query", _("A list's members are fixed; make a new list "
                                                              "to use another query."))])
    for name, value in fields.items():
        if name not in {"name", "description", "shopify_tag"}:
            raise TypeError(f"segment_update() cannot change {name!r}")
        setattr(segment, name, value)
    if query is not None or rule is not None:
        tree = rule_from_input(store=segment.store, query=query, rule=rule, slug=segment.slug)
        if tree != segment.rule:
            segment.rule, segment.query = tree, to_text(tree)
            number = (segment.versions.aggregate(n=Max("number"))["n"] or 0) + 1
            SegmentVersion.objects.create(
                segment=segment, number=number, rule=tree, query=segment.query, created_by=user
            )
            segment.baseline = 0  # its members are the old rule's: the next daily run evaluates everyone
    segment.save()
    return segment


def segment_duplicate(*, segment: Segment, user=None) -> Segment:
    slug = unique_slug(segment.store, f"{segment.slug}-copy")
    return segment_create(
        store=segment.store, name=_("%(name)s (copy)") % {"name": segment.name}, slug=slug, rule=segment.rule,
        description=segment.description, user=user,
    )


# ---------------------------------------------------------------------------------------------
# Recompute


@dataclass
class RecomputeResult:
    segment_id: int
    slug: str
    members: int
    joined: int
    left: int
    duration_ms: int
    as_of: dt.date


def _claim(segment: Segment) -> bool:
    now = timezone.now()
    claimed = (
        Segment.objects.filter(pk=segment.pk)
        .filter(~Q(status=SegmentStatus.RUNNING) | Q(computing_started_at__lt=now - CLAIM_STALE_AFTER)
                | Q(computing_started_at__isnull=True))
        .update(status=SegmentStatus.RUNNING, computing_started_at=now)
    )
    return claimed == 1


def segment_recompute(*, segment: Segment, as_of: dt.date | None = None, scope: str | None = None,
                      lines: rules.LineSummary | None = None) -> RecomputeResult:
    """Evaluate ``segment`` as of ``as_of`` (default: today in the store's zone) and store the diff.

    ``scope``: SQL selecting the only customers to evaluate (the others keep their membership).
    ``lines``: a written line summary (``rules.line_summary_create``) its products_purchased conditions read.
    Raises ``SegmentBusy`` when another worker holds it; records any error on the segment and
    re-raises it, leaving the previous membership untouched.
    """
    if segment.kind != SegmentKind.CONDITION:
        raise ValueError(_("Only condition segments are recomputed; list members change by explicit action."))
    if not _claim(segment):
        raise SegmentBusy(segment.slug)
    return _claimed_recompute(segment, as_of, scope, lines)


def _claimed_recompute(segment: Segment, as_of: dt.date | None, scope: str | None,
                       lines: rules.LineSummary | None = None) -> RecomputeResult:
    started = time.monotonic()
    try:
        with transaction.atomic():
            context = evaluation_context(store=segment.store, as_of=as_of,
                                         scope=RawSQL(scope, []) if scope else None)
            context.line_summary = lines
            tree = rules.check(segment.rule)
            members = rules.members_queryset(tree, context).values_list("id", flat=True)
            joined, left, count = membership_apply(segment, members, context.as_of, scope=scope)
    except Exception as exc:
        _failed(segment, exc, started)
        raise
    return _succeeded(segment, context.as_of, count, joined, left, started)


def _failed(segment: Segment, exc: Exception, started: float) -> None:
    Segment.objects.filter(pk=segment.pk).update(
        status=SegmentStatus.FAILED, computing_started_at=None, last_error=str(exc)[:2000],
        last_duration_ms=int((time.monotonic() - started) * 1000),
    )
    logger.exception("recompute of segment %s failed", segment.pk)


def _succeeded(segment: Segment, as_of: dt.date, count: int, joined: int, left: int, started: float
               ) -> RecomputeResult:
    duration_ms = int((time.monotonic() - started) * 1000)
    Segment.objects.filter(pk=segment.pk).update(
        status=SegmentStatus.SUCCEEDED, computing_started_at=None, last_computed_at=timezone.now(),
        last_computed_for=as_of, member_count=count, last_joined=joined, last_left=left,
        last_duration_ms=duration_ms, last_error="",
    )
    return RecomputeResult(segment.pk, segment.slug, count, joined, left, duration_ms, as_of)


def segments_recompute_together(segments: list[Segment], *, scope: str) -> list[RecomputeResult | str]:
    """Recompute ``segments`` (condition segments of one store, none referring to another) as of today
    for the customers ``scope`` (SQL) selects, in one evaluation; returns each one's result, or its
    error as text, in order.

    One statement gives every rule's verdict on each of those customers (``rules.verdicts_queryset``),
    one reads their memberships of all the segments, and the joins and leaves of all are written at
    once (``_verdicts_apply``): the daily recompute's segments that evaluate the same customers. Each
    segment is claimed and recorded as ``segment_recompute`` records it (they share the duration).
    When the shared evaluation fails, they are recomputed one at a time, so each records its own error.
    """
    outcomes: dict[int, RecomputeResult | str] = {}
    claimed = []
    for segment in segments:
        if _claim(segment):
            claimed.append(segment)
        else:
            outcomes[segment.pk] = str(SegmentBusy(segment.slug))
    started = time.monotonic()
    moved = None
    if claimed:
        store = claimed[0].store
        try:
            with transaction.atomic():
                context = evaluation_context(store=store, scope=RawSQL(scope, []))
                found = rules.verdict_members([rules.check(segment.rule) for segment in claimed], context)
                members = {segment.pk: chosen for segment, chosen in zip(claimed, found, strict=True)}
                moved = _verdicts_apply(store, members, scope, context.as_of)
                counts = _members_count([segment.pk for segment in claimed])
        except Exception:
            logger.warning("evaluating %d segments together failed; recomputing them one at a time", len(claimed),
                           exc_info=True)
    for segment in claimed:
        if moved is None:
            try:
                outcomes[segment.pk] = _claimed_recompute(segment, None, scope)
            except Exception as exc:  # recorded on the segment; the others keep going
                outcomes[segment.pk] = str(exc)
            continue
        joined, left = moved.get(segment.pk, (0, 0))
        outcomes[segment.pk] = _succeeded(segment, context.as_of, counts.get(segment.pk, 0), joined, left, started)
    return [outcomes[segment.pk] for segment in segments]


def _members_count(segment_ids: list[int]) -> dict[int, int]:
    segments_sql, params = rules.ids_condition("segment_id", segment_ids, connection.vendor)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT segment_id, COUNT(*) FROM {Membership._meta.db_table} WHERE {segments_sql} "
                       "GROUP BY segment_id", params)
        return dict(cursor.fetchall())


def membership_apply(
    segment: Segment, members: QuerySet | Sequence[int], as_of: dt.date, scope: Sequence[int] | str | None = None,
) -> tuple[int, int, int]:
    """Make stored membership equal ``members`` (within ``scope`` if given) and return (joined, left, members).

    ``members`` is a query of customer ids, or the ids themselves. ``scope`` is a list of customer
    ids or an SQL subquery selecting them (``customer_scope``): members outside it are left alone.
    """
    membership, events = Membership._meta.db_table, MembershipEvent._meta.db_table
    now = timezone.now()
    scope_sql, scope_params = "", []
    if isinstance(scope, str):
        scope_sql = f" AND m.customer_id IN ({scope})"
    elif scope is not None:
        scope_sql, scope_params = rules.ids_condition("m.customer_id", scope, connection.vendor)
        scope_sql = f" AND {scope_sql}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (customer_id bigint PRIMARY KEY)")
        temp_table_empty(cursor, STAGING_TABLE)
        if isinstance(members, QuerySet):
            try:
                members_sql, members_params = members.query.sql_with_params()
            except EmptyResultSet:  # Django proved the rule matches nobody (e.g. a tag no mapping reads)
                members_sql = None
            if members_sql is not None:
                cursor.execute(f"INSERT INTO {STAGING_TABLE} (customer_id) {members_sql}", members_params)
        else:
            cursor.executemany(f"INSERT INTO {STAGING_TABLE} (customer_id) VALUES (%s)", [(i,) for i in members])
        # In index order: asked whether rows of one segment exist, the planner scanned the table from its
        # start, expecting to meet one soon, and read every other segment's rows first (20–90 ms at 1M).
        cursor.execute(f"SELECT customer_id FROM {membership} WHERE segment_id = %s ORDER BY customer_id LIMIT 1",
                       [segment.pk])
        first = cursor.fetchone() is None
        left = 0
        if first:
            # No member yet (a new segment, or one that matched nobody): everyone matching joins, with no
            # anti-join to plan (one planned against the table another connection was filling became a
            # nested loop over it and ran for more than ten minutes).
            new, new_params = f"FROM {STAGING_TABLE} s", []
        else:
            if connection.vendor == "postgresql":
                cursor.execute(f"ANALYZE {STAGING_TABLE}")  # temporary tables are never auto-analysed
            left = _members_leave(cursor, segment, as_of, now, scope_sql, scope_params)
            # Joins: matching customers not yet members.
            new, new_params = f"""
                FROM {STAGING_TABLE} s WHERE NOT EXISTS (
                    SELECT 1 FROM {membership} m WHERE m.segment_id = %s AND m.customer_id = s.customer_id)
            """, [segment.pk]
        cursor.execute(
            f"""INSERT INTO {events} (store_id, segment_id, customer_id, kind, date, created_at)
                SELECT %s, %s, s.customer_id, %s, %s, %s {new}""",
            [segment.store_id, segment.pk, MembershipEventKind.JOINED, as_of, now, *new_params],
        )
        joined = cursor.rowcount
        if joined:
            cursor.execute(
                f"""INSERT INTO {membership} (store_id, segment_id, customer_id, since)
                    SELECT %s, %s, s.customer_id, %s {new}""",
                [segment.store_id, segment.pk, as_of, *new_params],
            )
        if first:
            members_count = joined
        else:
            cursor.execute(f"SELECT COUNT(*) FROM {membership} WHERE segment_id = %s", [segment.pk])
            members_count = cursor.fetchone()[0]
    return joined, left, members_count


def _members_leave(cursor, segment: Segment, as_of: dt.date, now: dt.datetime, scope_sql: str,
                   scope_params: list) -> int:
    """Stored members (within the scope) missing from the staging table leave; returns how many."""
    membership, events = Membership._meta.db_table, MembershipEvent._meta.db_table
    gone = f"""
        FROM {membership} m WHERE m.segment_id = %s{scope_sql}
          AND NOT EXISTS (SELECT 1 FROM {STAGING_TABLE} s WHERE s.customer_id = m.customer_id)
    """
    if connection.vendor == "postgresql":
        # One pass: the members found gone are deleted and their leave events written from what the delete
        # returns (finding them probes every scoped customer's membership: 10,000 probes for an incremental
        # update, twice as two statements).
        cursor.execute(
            f"""WITH gone AS (DELETE {gone} RETURNING m.store_id, m.segment_id, m.customer_id)
                INSERT INTO {events} (store_id, segment_id, customer_id, kind, date, created_at)
                SELECT store_id, segment_id, customer_id, %s, %s, %s FROM gone""",
            [segment.pk, *scope_params, MembershipEventKind.LEFT, as_of, now],
        )
        return cursor.rowcount
    cursor.execute(
        f"""INSERT INTO {events} (store_id, segment_id, customer_id, kind, date, created_at)
            SELECT m.store_id, m.segment_id, m.customer_id, %s, %s, %s {gone}""",
        [MembershipEventKind.LEFT, as_of, now, segment.pk, *scope_params],
    )
    left = cursor.rowcount
    if left:
        cursor.execute(
            f"DELETE FROM {membership} WHERE segment_id = %s AND customer_id IN (SELECT m.customer_id {gone})",
            [segment.pk, segment.pk, *scope_params],
        )
    return left


@dataclass
class StoreRecompute:
    results: list[RecomputeResult]
    failed: dict[str, str]


def store_segments_recompute(*, store: Store, as_of: dt.date | None = None, slugs: Iterable[str] | None = None
                             ) -> StoreRecompute:
    """Recompute the store's condition segments, each after the segments it refers to.

    A failing segment is recorded (on itself and in the result) and the others still run;
    segments caught in a reference cycle are refused. On PostgreSQL, segments that do not depend on
    each other run side by side on ``SEGMENT_RECOMPUTE_THREADS`` connections (each its own
    transaction), so a worker uses more than one core; inside an outer transaction they run one
    after another, since other connections could not see its rows. On PostgreSQL the
    ``products_purchased`` conditions of all the segments are answered from one read of the line items
    (``rules.line_summary_create``), written while the other connection evaluates the segments that
    read none; if it cannot be written, each segment reads the lines itself.
    """
    segments = Segment.objects.filter(store=store, kind=SegmentKind.CONDITION)
    ordered, cyclic = dependency_order(segments)
    wanted = set(slugs) if slugs is not None else None
    failed: dict[str, str] = {}
    for segment in cyclic:
        message = _("Segments refer to each other in a cycle; fix one of them.")
        Segment.objects.filter(pk=segment.pk).update(status=SegmentStatus.FAILED, last_error=message)
        failed[segment.slug] = message
    results = []
    threads = settings.SEGMENT_RECOMPUTE_THREADS
    parallel = threads > 1 and connection.vendor == "postgresql" and not connection.in_atomic_block
    todo = [s for s in ordered if wanted is None or s.slug in wanted]
    # The products_purchased conditions of every segment, answered from one pass over the line items
    # written to a table all connections read (rules.line_summary_create), instead of one pass each.
    line_segments = {s.pk for s in todo if rules.reads_lines(s.rule)}
    table = None
    if connection.vendor == "postgresql" and len(line_segments) > 1:
        line_summaries_sweep()
        table = line_summary_table()
    pool = ThreadPoolExecutor(max_workers=threads) if parallel else None
    try:
        summary = _line_summary_start(store, as_of, [s for s in todo if s.pk in line_segments], table, pool)

        def recompute(segment, close):
            lines = summary.result() if summary is not None and segment.pk in line_segments else None
            return _recompute_outcome(segment, as_of, close=close, lines=lines)

        for wave in dependency_waves(todo):
            # Segments reading line items last, so the other connection works while the summary is written.
            wave = sorted(wave, key=lambda s: s.pk in line_segments)
            if pool is not None and len(wave) > 1:
                outcomes = list(pool.map(lambda s: recompute(s, True), wave))
            else:
                outcomes = [recompute(s, False) for s in wave]
            for segment, outcome in zip(wave, outcomes, strict=True):
                if isinstance(outcome, RecomputeResult):
                    results.append(outcome)
                else:
                    failed[segment.slug] = outcome
    finally:
        if pool is not None:
            pool.shutdown()
        if table is not None:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
    return StoreRecompute(results=results, failed=failed)


def line_summary_table(now: dt.datetime | None = None) -> str:
    """A new line summary's table name: ``ecp_line_summary_<unix seconds>_<random>``."""
    written = int((now or timezone.now()).timestamp())
    return f"{rules.LineSummary.TABLE}_{written}_{uuid.uuid4().hex[:12]}"


def line_summaries_sweep() -> list[str]:
    """Drop the line summary tables written more than ``LINE_SUMMARY_ABANDONED_AFTER`` ago: a recompute
    drops its own when it ends, so these were left by a worker killed during one. Returns their names."""
    if connection.vendor != "postgresql":
        return []
    oldest = int((timezone.now() - LINE_SUMMARY_ABANDONED_AFTER).timestamp())
    with connection.cursor() as cursor:
        cursor.execute("SELECT relname FROM pg_class WHERE relkind = 'r' "
                       "AND relnamespace = current_schema()::regnamespace AND relname LIKE %s",
                       [rules.LineSummary.TABLE.replace("_", r"\_") + r"\_%"])
        abandoned = []
        for (name,) in cursor.fetchall():
            written = name[len(rules.LineSummary.TABLE) + 1:].split("_")[0]
            if written.isdigit() and int(written) < oldest:
                abandoned.append(name)
        for name in abandoned:
            cursor.execute(f'DROP TABLE IF EXISTS "{name}"')
    if abandoned:
        logger.warning("dropped %d line summary tables left by an interrupted recompute: %s", len(abandoned),
                       ", ".join(abandoned))
    return abandoned


def _line_summary_start(store: Store, as_of: dt.date | None, segments: list[Segment], table: str | None,
                        pool: ThreadPoolExecutor | None) -> Future | None:
    """Write the line summary of ``segments`` to ``table`` (on the pool when given, first in its queue);
    the future's result is the summary, or None when it could not be written (the segments then read
    line items themselves)."""
    if table is None:
        return None

    def create() -> rules.LineSummary | None:
        try:
            # A savepoint inside a transaction: a summary that fails leaves the transaction usable.
            with transaction.atomic():
                context = evaluation_context(store=store, as_of=as_of)
                return rules.line_summary_create([rules.check(s.rule) for s in segments], context, table)
        except Exception:
            logger.warning("the line summary of %d segments could not be written", len(segments), exc_info=True)
            return None
        finally:
            if pool is not None:
                connection.close()  # this thread's own connection

    if pool is not None:
        return pool.submit(create)
    done: Future = Future()
    done.set_result(create())
    return done


def store_segments_refresh(*, store: Store, scoped_share_max: float | None = None) -> StoreRecompute:
    """The daily recompute: the store's condition segments as of today, each evaluated only for the
    customers whose verdicts may have moved since its last recompute (``segments.changes``).

    Segments without a usable baseline (new ones, the first run, a changed catalogue), RFM groups
    and the segments referring to them are evaluated for everyone; when that is all of them, or
    when the others would evaluate more than ``SCOPED_SHARE_MAX`` of the customers on average, this
    is ``store_segments_recompute`` (side by side on several connections); ``scoped_share_max``
    replaces that limit. The baseline it captured first is kept for tomorrow.
    ``ECPOWER_SEGMENTS_INCREMENTAL=0`` evaluates everyone.
    """
    share_max = SCOPED_SHARE_MAX if scoped_share_max is None else scoped_share_max
    segments = Segment.objects.filter(store=store, kind=SegmentKind.CONDITION)
    ordered, cyclic = dependency_order(segments)
    taken = changes.capture(store, ChangePurpose.RECOMPUTE, DIGESTS_TABLE)
    baseline, everyone = changes.baseline_compare(store, taken, {s.pk: s.baseline for s in ordered})
    today = store_today(store)
    everyone |= {s.pk for s in ordered if s.last_computed_for is None or s.last_computed_for > today
                 or s.status != SegmentStatus.SUCCEEDED}
    everyone |= changes.evaluated_for_everyone(store, ordered)
    everyone |= changes.referring_to(ordered, everyone)
    buckets: dict[int, int] = {}
    if (settings.SEGMENTS_INCREMENTAL and baseline is not None and not cyclic
            and taken.changed_share <= share_max):
        with connection.cursor() as cursor:
            buckets = changes.dirty_fill(
                cursor, store, DIRTY_TABLE, ordered, everyone,
                lambda segment: (segment.last_computed_for, today),
                changes.changed_since_sql(store, taken, baseline))
            if changes.dirty_share(cursor, DIRTY_TABLE, buckets, taken.customers) > share_max:
                buckets = {}
    if not buckets:
        done = store_segments_recompute(store=store)  # also reports segments caught in a cycle
    else:
        done = StoreRecompute(results=[], failed={})
        for wave in dependency_waves(ordered):
            # Segments that evaluate the same customers are evaluated together (one read of them).
            by_bucket: dict[int | None, list[Segment]] = {}
            for segment in wave:
                by_bucket.setdefault(buckets.get(segment.pk), []).append(segment)
            for bucket, group in by_bucket.items():
                scope = changes.bucket_scope(DIRTY_TABLE, bucket) if bucket else None
                if scope is not None and len(group) > 1:
                    outcomes = segments_recompute_together(group, scope=scope)
                else:
                    outcomes = [_recompute_outcome(segment, None, scope=scope) for segment in group]
                for segment, outcome in zip(group, outcomes, strict=True):
                    if isinstance(outcome, RecomputeResult):
                        done.results.append(outcome)
                    else:
                        done.failed[segment.slug] = outcome
    with transaction.atomic(), connection.cursor() as cursor:
        number = changes.baseline_keep(cursor, store, taken)
        Segment.objects.filter(pk__in=[r.segment_id for r in done.results]).update(baseline=number)
    return done


def _recompute_outcome(segment: Segment, as_of: dt.date | None, *, close: bool = False, scope: str | None = None,
                       lines: rules.LineSummary | None = None) -> RecomputeResult | str:
    try:
        return segment_recompute(segment=segment, as_of=as_of, scope=scope, lines=lines)
    except Exception as exc:  # recorded on the segment by segment_recompute; the others keep going
        return str(exc)
    finally:
        if close:
            connection.close()  # this thread's own connection


def customers_segments_recompute(
    *, store: Store, customer_ids: Iterable[int], as_of: dt.date | None = None
) -> dict[str, tuple[int, int]]:
    """Recompute every condition segment for these customers only (after orders or a webhook).

    The ids are the scope (an array constant on PostgreSQL, a temporary table once per connection
    elsewhere: ``customers_scope``), pushed into every subquery (rules.EvaluationContext.scope), so the
    cost follows the customers touched, not the store. The segments are evaluated together: one
    statement gives every rule's verdict on each customer (``rules.verdicts_queryset``; an
    ``in_segment`` condition compiles the referenced rule inline, since that segment's membership of
    these customers becomes its rule's verdict in the same call), one read finds their stored
    memberships, and the joins and leaves of all of them are written at once (``_verdicts_apply``).
    Returns {slug: (joined, left)} for segments that changed; their counts move by joins and leaves.

    From ``SCOPED_SIDE_BY_SIDE_MIN`` customers on, on PostgreSQL outside a transaction, the customers are
    split into ``SEGMENT_RECOMPUTE_THREADS`` ranges of ids, each evaluated for every segment on its own
    connection and in its own transaction (the first error is raised once the others are done; a second
    call repeats nothing that already holds). Split by customer rather than by segment, the connections
    share the writes evenly: the joins and leaves fall mostly on a few segments (recent and lapsed
    buyers), which a split by segment gave to one connection (docs/performance.md).
    """
    ids = sorted(set(customer_ids))
    if not ids:
        return {}
    ordered, _cyclic = dependency_order(Segment.objects.filter(store=store, kind=SegmentKind.CONDITION))
    if not ordered:
        return {}
    as_of = as_of or store_today(store)  # one day for every segment, whichever connection evaluates it
    changed: dict[str, tuple[int, int]] = {}
    threads = settings.SEGMENT_RECOMPUTE_THREADS
    if (threads < 2 or len(ids) < SCOPED_SIDE_BY_SIDE_MIN or connection.vendor != "postgresql"
            or connection.in_atomic_block):
        with transaction.atomic():
            _scoped_group_apply(ordered, store, customers_scope(ids, SCOPE_TABLE), as_of, changed)
        return changed
    size = -(-len(ids) // threads)
    ranges = [ids[first:first + size] for first in range(0, len(ids), size)]
    parts: list[dict[str, tuple[int, int]]] = [{} for _range in ranges]
    with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
        futures = [pool.submit(_scoped_group_on_own_connection, ordered, store, part_ids, as_of, part)
                   for part_ids, part in zip(ranges, parts, strict=True)]
        for future in futures:
            future.result()  # raises the first error, after every thread has finished
    for part in parts:
        for slug, (joined, left) in part.items():
            before = changed.get(slug, (0, 0))
            changed[slug] = (before[0] + joined, before[1] + left)
    return changed


def _scoped_group_on_own_connection(segments: list[Segment], store: Store, ids: Sequence[int], as_of: dt.date,
                                    changed: dict[str, tuple[int, int]]) -> None:
    try:
        _scoped_group_apply(segments, store, customers_scope(ids, SCOPE_TABLE), as_of, changed)
    finally:
        connection.close()  # this thread's own connection


def _scoped_group_apply(segments: list[Segment], store: Store, scope: Sequence[int] | str, as_of: dt.date,
                        changed: dict[str, tuple[int, int]]) -> None:
    """Evaluate ``segments`` for the customers of ``scope`` in one statement and apply the verdicts.

    When the statement fails (a broken rule), the segments are evaluated one at a time, each in its own
    transaction, so the others still apply; the first error is raised afterwards.
    """
    context = evaluation_context(store=store, as_of=as_of, scope=rules.scope_from(scope))
    context.inline_segments = True
    try:
        with transaction.atomic():
            found = rules.verdict_members([segment.rule for segment in segments], context)
            members = {segment.pk: chosen for segment, chosen in zip(segments, found, strict=True)}
            moved = _verdicts_apply(store, members, scope, as_of)
            # In id order: another connection applying other customers' verdicts updates the same counts,
            # and waits for this one's commit on each segment's row instead of deadlocking with it.
            for segment_id, (joined, left) in sorted(moved.items()):
                # Moved, not counted again: reading every member's index entry was 20–60 ms a segment at 1M
                # customers. The daily recompute counts them (and so corrects what deleted customers took away).
                Segment.objects.filter(pk=segment_id).update(member_count=F("member_count") + joined - left)
    except Exception:
        if len(segments) == 1:
            raise
        logger.warning("one pass over %d segments failed; evaluating them one at a time", len(segments),
                       exc_info=True)
        moved = None
    if moved is None:
        failure = None
        for segment in segments:
            try:
                _scoped_group_apply([segment], store, scope, as_of, changed)
            except Exception as exc:  # the first is raised once the others are applied
                failure = failure or exc
        if failure is not None:
            raise failure
        return
    for segment in segments:
        if segment.pk in moved:
            changed[segment.slug] = moved[segment.pk]


def _verdicts_apply(store: Store, members: dict[int, set[int]], scope: Sequence[int] | str, as_of: dt.date
                    ) -> dict[int, tuple[int, int]]:
    """Make the stored memberships of the scope's customers equal ``members`` ({segment id: customer
    ids}) for each of those segments, recording joins and leaves as of ``as_of``; returns
    {segment id: (joined, left)} for the segments that moved.

    The scope's memberships of all the segments are read in one statement (one probe of the primary key
    per segment and customer) and compared here; the joins and the leaves of every segment are then
    written in one statement each.
    """
    membership, events = Membership._meta.db_table, MembershipEvent._meta.db_table
    segment_ids = sorted(members)
    if isinstance(scope, str):
        scope_sql, scope_params = f"customer_id IN ({scope})", []
    else:
        scope_sql, scope_params = rules.ids_condition("customer_id", scope, connection.vendor)
    segments_sql, segments_params = rules.ids_condition("segment_id", segment_ids, connection.vendor)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT segment_id, customer_id FROM {membership} WHERE {segments_sql} AND {scope_sql}",
                       [*segments_params, *scope_params])
        joins, leaves = pairs_diff(members, cursor.fetchall())
        now = timezone.now()
        if leaves:
            source, params = pairs_source(cursor, leaves)
            if connection.vendor == "postgresql":
                # Joined to the pairs as given (sorted), the primary key is probed in its own order: at 1M
                # customers 17,000 leaves took 0.26-0.29 s this way against 0.33-0.39 s as `IN (pairs)`,
                # whose hash of the pairs probed in random order.
                cursor.execute(f"DELETE FROM {membership} AS m USING {source} "
                               f"WHERE m.segment_id = p.segment_id AND m.customer_id = p.customer_id", params)
            else:
                cursor.execute(f"DELETE FROM {membership} WHERE (segment_id, customer_id) IN "
                               f"(SELECT p.segment_id, p.customer_id FROM {source})", params)
            cursor.execute(f"INSERT INTO {events} (store_id, segment_id, customer_id, kind, date, created_at) "
                           f"SELECT %s, p.segment_id, p.customer_id, %s, %s, %s FROM {source}",
                           [store.pk, MembershipEventKind.LEFT, as_of, now, *params])
        if joins:
            source, params = pairs_source(cursor, joins)
            cursor.execute(f"INSERT INTO {membership} (store_id, segment_id, customer_id, since) "
                           f"SELECT %s, p.segment_id, p.customer_id, %s FROM {source}", [store.pk, as_of, *params])
            cursor.execute(f"INSERT INTO {events} (store_id, segment_id, customer_id, kind, date, created_at) "
                           f"SELECT %s, p.segment_id, p.customer_id, %s, %s, %s FROM {source}",
                           [store.pk, MembershipEventKind.JOINED, as_of, now, *params])
    joined, left = Counter(s for s, _c in joins), Counter(s for s, _c in leaves)
    return {pk: (joined[pk], left[pk]) for pk in joined | left}


def templates_add(*, store: Store, slugs: Iterable[str] | None = None, user=None) -> list[Segment]:
    """Add the store's templates (or those named) that it does not have yet; returns the new ones."""
    from segments.catalogue import store_templates

    wanted = set(slugs) if slugs is not None else None
    existing = set(Segment.objects.filter(store=store).values_list("slug", flat=True))
    created = []
    for template in store_templates(store):
        if template.slug in existing or (wanted is not None and template.slug not in wanted):
            continue
        created.append(segment_create(
            store=store, name=template.name, slug=template.slug, query=template.query,
            description=template.description, user=user,
        ))
    return created
