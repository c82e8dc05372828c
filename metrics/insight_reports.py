"""Cohorts and RFM of large stores, computed in the background and kept (``InsightReport``; docs/metrics.md).

``insights.cohorts`` reads every counted order of the store and ``insights.rfm_summary`` every buyer: 10 s and
8 s at a million customers, on every view. Above ``settings.INSIGHTS_KEPT_ABOVE`` customers (or segment
members) the admin asks here instead:

* ``insight_report_wanted`` (selector): whether a store or segment is large enough for a kept report.
* ``insight_report_request`` (service): the kept report, with a new computing queued when it is from an
  earlier day of the store, was never computed, or ``fresh`` is asked, unless one is already queued or running.
* ``insight_report_run`` (task, by id): computes and keeps the table; safe to run twice (a report already
  computed since it was requested, or running on another worker, is left alone).
* ``insight_reports_refresh`` (service): the daily run queues its large store's own reports after the day's
  data is in, so the day's first view finds today's table.
* ``insight_report_today`` (selector): today's kept table, which the API answers with when there is one.

A kept table is the same dataclasses the small stores' pages compute (``cohorts_kept`` / ``rfm_kept`` read
them back), so both pages render one way.
"""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ecpower.commerce.models import Store
from metrics import insights
from metrics.models import InsightKind, InsightReport, InsightStatus
from segments import rfm
from segments.models import Segment
from segments.selectors import customer_id_span, store_today

COHORT_MONTHS = 12


def insight_report_wanted(store: Store, segment: Segment | None = None) -> bool:
    """Whether this store's (or segment's) cohorts and RFM come from a kept report rather than the page itself."""
    size = segment.member_count if segment is not None else customer_id_span(store)
    return size > settings.INSIGHTS_KEPT_ABOVE


def _scope(store: Store, segment: Segment | None, kind: str):
    reports = InsightReport.objects.filter(store=store, kind=kind)
    return reports.filter(segment=segment) if segment is not None else reports.filter(segment__isnull=True)


def _stale_running(now: dt.datetime) -> dt.datetime:
    """A computing started before this has lost its worker (the broker's own timeout has passed)."""
    return now - dt.timedelta(seconds=settings.Q_CLUSTER.get("timeout", 3600))


def _in_flight(report: InsightReport, now: dt.datetime) -> bool:
    if report.status == InsightStatus.QUEUED:
        return report.requested_at >= _stale_running(now)
    return report.status == InsightStatus.RUNNING and report.started_at >= _stale_running(now)


def insight_report_request(*, store: Store, segment: Segment | None = None, kind: str,
                           fresh: bool = False) -> InsightReport:
    """The kept report of ``kind`` for the store (or segment), queueing a computing where it is needed.

    A computing is queued when the report was never computed, when its table is from an earlier day of the
    store, after a failure, or when ``fresh``; never while one is queued or running (a worker gone for longer
    than the broker's timeout no longer counts). Two requests at once queue one computing.
    """
    if kind not in InsightKind.values:
        raise ValueError(f"unknown insight report {kind!r}")
    now = timezone.now()
    with transaction.atomic():
        report = _scope(store, segment, kind).select_for_update().first()
        created = False
        if report is None:
            report, created = InsightReport.objects.get_or_create(
                store=store, segment=segment, kind=kind, defaults={"requested_at": now})
            if not created:  # another request made it in between
                report = _scope(store, segment, kind).select_for_update().get()
        due = created or not _in_flight(report, now) and (
            fresh or report.data is None or report.status == InsightStatus.FAILED
            or report.day != store_today(store))
        if not due:
            return report
        InsightReport.objects.filter(pk=report.pk).update(
            status=InsightStatus.QUEUED, requested_at=now, started_at=None, error="")
        report.refresh_from_db()
        report_id = report.pk
        transaction.on_commit(lambda: _enqueue(report_id))
    return report


def _enqueue(report_id: int) -> None:
    from django_q.tasks import async_task

    async_task("metrics.insight_reports.insight_report_run", report_id, task_name=f"insight-report-{report_id}")


def insight_report_run(report_id: int) -> str:
    """Compute and keep one report; "skipped" when another worker holds it or it was computed since its request.

    The table is computed outside any transaction (cohorts read on two connections) and written in one update;
    a failure is recorded on the report, which keeps its previous table, and raised for the broker's log.
    """
    now = timezone.now()
    claimed = InsightReport.objects.filter(pk=report_id, status=InsightStatus.QUEUED).update(
        status=InsightStatus.RUNNING, started_at=now)
    if not claimed:
        stale = InsightReport.objects.filter(pk=report_id, status=InsightStatus.RUNNING,
                                             started_at__lt=_stale_running(now))
        if not stale.update(started_at=now):
            return "skipped"
    report = InsightReport.objects.select_related("store", "segment").get(pk=report_id)
    began = time.monotonic()
    try:
        if report.kind == InsightKind.COHORTS:
            data = cohorts_dumped(insights.cohorts(report.store, report.segment, months=COHORT_MONTHS))
        else:
            data = rfm_dumped(insights.rfm_summary(report.store, report.segment))
    except Exception as exc:
        InsightReport.objects.filter(pk=report_id).update(status=InsightStatus.FAILED, error=str(exc)[:2000])
        raise
    InsightReport.objects.filter(pk=report_id).update(
        status=InsightStatus.DONE, data=data, day=store_today(report.store), computed_at=timezone.now(),
        seconds=round(time.monotonic() - began, 2), error="")
    return InsightStatus.DONE


def insight_report_today(store: Store, segment: Segment | None, kind: str) -> InsightReport | None:
    """The kept table of ``kind`` computed today for a large store (or segment), or None (a small one, or no
    table of today yet): what the API answers with before computing one itself."""
    if not insight_report_wanted(store, segment):
        return None
    return _scope(store, segment, kind).filter(data__isnull=False, day=store_today(store)).first()


def insight_reports_refresh(*, store: Store) -> list[InsightReport]:
    """Queue the store's own cohorts and RFM (not its segments') for today when the store is large enough."""
    if not insight_report_wanted(store):
        return []
    return [insight_report_request(store=store, kind=kind) for kind in InsightKind.values]


# --- the kept tables ---------------------------------------------------------------------------------


def _decimal(value) -> Decimal | None:
    return None if value is None else Decimal(value)


def cohorts_dumped(cohorts: list[insights.Cohort]) -> dict:
    return {"months": COHORT_MONTHS, "cohorts": [
        {"month": cohort.month.isoformat(), "customers": cohort.customers, "cells": cohort.cells}
        for cohort in cohorts]}


def cohorts_kept(report: InsightReport) -> list[insights.Cohort]:
    """The kept cohorts as ``insights.cohorts`` returned them (Decimals, dates)."""
    return [insights.Cohort(
        month=dt.date.fromisoformat(row["month"]), customers=row["customers"],
        cells=[{"offset": cell["offset"], "ltv": _decimal(cell["ltv"]), "repeat_rate": _decimal(cell["repeat_rate"]),
                "orders_per_customer": _decimal(cell["orders_per_customer"])} for cell in row["cells"]])
        for row in (report.data or {}).get("cohorts", [])]


def rfm_dumped(summary: insights.RfmSummary) -> dict:
    return {"customers": summary.customers, "groups": summary.groups,
            "grid": {str(fm): cells for fm, cells in summary.grid.items()}}


def rfm_kept(report: InsightReport) -> insights.RfmSummary | None:
    """The kept RFM summary as ``insights.rfm_summary`` returned it, or None before the first one."""
    if not report.data:
        return None
    # Labels in the reader's language, not the worker's.
    groups = [{**group, "label": str(rfm.GROUP_LABELS[group["group"]]), "share": _decimal(group["share"]),
               "spent": _decimal(group["spent"])} for group in report.data["groups"]]
    return insights.RfmSummary(customers=report.data["customers"], groups=groups,
                               grid={int(fm): cells for fm, cells in report.data["grid"].items()})
