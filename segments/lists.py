"""Writes about list segments: frozen member sets made from a query, a segment, a set
expression or a CSV file, with an optional reproducible holdout.

A list's members are fixed when it is made (joins recorded as ``MembershipEvent`` on that day)
and never change when its sources later change: recompute only touches condition segments.
Each function runs in one transaction: a list is made whole or not at all.
"""

from __future__ import annotations

import datetime as dt
import random
import secrets
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from ecpower.commerce.models import Customer, Store
from ecpower.commerce.shopify_csv import CsvFileError
from segments import csv_lists, rules, set_expressions
from segments.models import ListOrigin, ListUpload, Membership, Segment, SegmentKind, SegmentStatus
from segments.query_language import to_text
from segments.selectors import evaluation_context, segment_exists_checker, store_today
from segments.services import membership_apply, rule_from_input, slug_for

HOLDOUT_CHUNK = 5000


def _problem(path: str, message: str) -> rules.InvalidRule:
    return rules.InvalidRule([rules.RuleProblem(path, message)])


def holdout_share(value) -> Decimal | None:
    """A holdout percentage as given by a user (None or "" for none), checked to be in (0, 100)."""
    if value is None or value == "":
        return None
    try:
        share = Decimal(str(value)).quantize(Decimal("0.01"))
    except InvalidOperation:
        raise _problem("holdout_percent", _("The holdout must be a number of percent, e.g. 10.")) from None
    if not Decimal(0) < share < Decimal(100):
        raise _problem("holdout_percent", _("The holdout must be more than 0 and less than 100 percent."))
    return share


def _new_list(*, store: Store, name: str, slug: str, origin: str, user, description: str, holdout_percent,
              **fields) -> Segment:
    holdout_share(holdout_percent)
    slug = slug or slug_for(store, name, kind="list")
    if Segment.objects.filter(store=store, slug=slug).exists():
        raise _problem("slug", _("A segment with the slug %(slug)r already exists.") % {"slug": slug})
    return Segment.objects.create(
        store=store, name=name, slug=slug, description=description, kind=SegmentKind.LIST, list_origin=origin,
        status=SegmentStatus.RUNNING, created_by=user, **fields,
    )


def _fill(segment: Segment, members: QuerySet | list[int], *, holdout_percent, seed: int | None) -> Segment:
    today = store_today(segment.store)
    _joined, _left, count = membership_apply(segment, members, today)
    share = holdout_share(holdout_percent)
    held = 0
    if share is not None:
        seed = seed if seed is not None else secrets.randbelow(2**31)
        held = _hold_out(segment, share, seed)
    Segment.objects.filter(pk=segment.pk).update(
        status=SegmentStatus.SUCCEEDED, last_computed_at=timezone.now(), last_computed_for=today,
        member_count=count, last_joined=count, holdout_percent=share, holdout_seed=seed if share else None,
        holdout_count=held,
    )
    segment.refresh_from_db()
    return segment


def holdout_size(members: int, share: Decimal) -> int:
    """Members held out: the share of ``members``, rounded half up (10 % of 15 is 2)."""
    return int((Decimal(members) * share / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _hold_out(segment: Segment, share: Decimal, seed: int) -> int:
    """Mark a seeded random sample of the members: same members and seed, same sample."""
    ids = sorted(Membership.objects.filter(segment=segment).values_list("customer_id", flat=True))
    chosen = sorted(random.Random(seed).sample(ids, holdout_size(len(ids), share)))
    for start in range(0, len(chosen), HOLDOUT_CHUNK):
        Membership.objects.filter(segment=segment, customer_id__in=chosen[start : start + HOLDOUT_CHUNK]).update(
            holdout=True
        )
    return len(chosen)


def _require_computed(sources: list[Segment]) -> None:
    stale = [s.slug for s in sources if s.kind == SegmentKind.CONDITION and s.last_computed_at is None]
    if stale:
        raise _problem("", _("These segments have not been computed yet; recompute them first: %(slugs)s.")
                       % {"slugs": ", ".join(stale)})


@transaction.atomic
def list_create_from_query(
    *, store: Store, name: str, slug: str = "", query: str | None = None, rule: dict | None = None,
    as_of: dt.date | None = None, holdout_percent=None, seed: int | None = None, description: str = "", user=None,
) -> Segment:
    """A list of the customers matching a query (or rule tree) as of ``as_of`` (default today)."""
    tree = rule_from_input(store=store, query=query, rule=rule)
    context = evaluation_context(store=store, as_of=as_of)
    segment = _new_list(store=store, name=name, slug=slug, origin=ListOrigin.QUERY, user=user,
                        holdout_percent=holdout_percent, description=description, rule=tree, query=to_text(tree),
                        as_of=context.as_of)
    members = rules.members_queryset(tree, context).values_list("id", flat=True)
    segment.source_segments.set(Segment.objects.filter(store=store, slug__in=rules.referenced_segments(tree)))
    return _fill(segment, members, holdout_percent=holdout_percent, seed=seed)


@transaction.atomic
def list_create_from_segment(
    *, source: Segment, name: str, slug: str = "", holdout_percent=None, seed: int | None = None,
    description: str = "", user=None,
) -> Segment:
    """A snapshot of ``source``'s current members (held-out members of a list included)."""
    _require_computed([source])
    segment = _new_list(store=source.store, name=name, slug=slug, origin=ListOrigin.SNAPSHOT, user=user,
                        holdout_percent=holdout_percent, description=description, expression=source.slug,
                        as_of=source.last_computed_for or store_today(source.store))
    segment.source_segments.set([source])
    members = Membership.objects.filter(segment=source).values_list("customer_id", flat=True)
    return _fill(segment, members, holdout_percent=holdout_percent, seed=seed)


def expression_members(*, store: Store, expression: str) -> tuple[dict, QuerySet]:
    """The parsed expression and its members' ids (``InvalidRule`` with line and column when wrong)."""
    tree = set_expressions.parse(expression, segment_exists=segment_exists_checker(store))
    sources = {s.slug: s for s in Segment.objects.filter(store=store, slug__in=set_expressions.slugs(tree))}
    _require_computed(list(sources.values()))

    def member_of(slug: str) -> Q:
        return Q(pk__in=Membership.objects.filter(segment=sources[slug]).values("customer_id"))

    condition = set_expressions.compile_expression(tree, member_of)
    return tree, Customer.objects.filter(store=store).filter(condition).values_list("id", flat=True)


@transaction.atomic
def list_create_from_expression(
    *, store: Store, name: str, expression: str, slug: str = "", holdout_percent=None, seed: int | None = None,
    description: str = "", user=None,
) -> Segment:
    """A list from union (|), intersection (&) and difference (-) of segments' current members."""
    tree, members = expression_members(store=store, expression=expression)
    segment = _new_list(store=store, name=name, slug=slug, origin=ListOrigin.EXPRESSION, user=user,
                        holdout_percent=holdout_percent, description=description,
                        expression=set_expressions.to_text(tree), as_of=store_today(store))
    segment.source_segments.set(Segment.objects.filter(store=store, slug__in=set_expressions.slugs(tree)))
    return _fill(segment, members, holdout_percent=holdout_percent, seed=seed)


@transaction.atomic
def list_create_from_csv(
    *, store: Store, name: str, data: bytes, file_name: str, slug: str = "", column: str | None = None,
    holdout_percent=None, seed: int | None = None, description: str = "", user=None,
) -> Segment:
    """A list of the customers a CSV file names; its match report is kept in ``segment.upload``.

    Raises ``CsvFileError`` (nothing made) for a file over the size limit, one that cannot be
    read, one without an identifier column, or one where no row matches a customer.
    """
    holdout_share(holdout_percent)  # a bad share is refused before the file is read
    parsed = csv_lists.read_identifiers(data, file_name=file_name, column=column,
                                        max_bytes=settings.LIST_CSV_MAX_UPLOAD_BYTES)
    report = csv_lists.match_identifiers(store, parsed.values)
    if not report.customer_ids:
        examples = "; ".join(f"line {line}: {value} ({reason})" for line, value, reason in report.unmatched[:3])
        raise CsvFileError(file_name, _("None of the %(n)d rows matched a customer of %(store)s. %(examples)s")
                           % {"n": len(parsed.values), "store": store.name, "examples": examples})
    segment = _new_list(store=store, name=name, slug=slug, origin=ListOrigin.CSV, user=user,
                        holdout_percent=holdout_percent, description=description)
    ListUpload.objects.create(
        segment=segment, file_name=file_name[:255], size_bytes=parsed.size_bytes, encoding=parsed.encoding,
        column=parsed.column[:255], has_header=parsed.has_header, rows=len(parsed.values),
        blank_rows=parsed.blank_rows, matched=report.matched,
        unmatched=[list(row) for row in report.unmatched], duplicates=[list(row) for row in report.duplicates],
    )
    return _fill(segment, report.customer_ids, holdout_percent=holdout_percent, seed=seed)
