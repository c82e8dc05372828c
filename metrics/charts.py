"""What the metric charts draw: snapshot series as labels and datasets (Chart.js reads them as JSON).

Kept apart from the views so a test can check the numbers a page charts without a browser.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.utils.translation import gettext_lazy as _

from metrics.models import SegmentSnapshot
from segments.models import Segment

# KPI field → its label; the order of the KPI picker and of the CSV columns.
KPIS = {
    "members": _("Members"),
    "joined": _("Joined"),
    "left": _("Left"),
    "orders": _("Orders"),
    "revenue": _("Revenue"),
    "repeat_rate": _("Repeat rate (%)"),
    "ltv": _("LTV"),
    "aov_customer": _("AOV (per customer)"),
    "aov_order": _("AOV (per order)"),
    "avg_orders": _("Orders per member"),
    "purchase_interval_days": _("Days between purchases"),
}
COLOURS = ("#417690", "#d9822b", "#5b8c5a", "#b5475a", "#7b61a8", "#3a9fbf", "#a8893a", "#5f6b7a")


def _number(field: str, value):
    if value is None:
        return None
    if field == "repeat_rate":
        return float((Decimal(value) * 100).quantize(Decimal("0.1")))
    return float(value) if isinstance(value, Decimal) else value


def segment_series(segment: Segment, since: dt.date | None = None, until: dt.date | None = None) -> dict:
    """{labels: [dates], series: {kpi: [values]}, approximate: [dates], weekly: [dates]} of one segment."""
    rows = SegmentSnapshot.objects.filter(segment=segment).order_by("date")
    if since:
        rows = rows.filter(date__gte=since)
    if until:
        rows = rows.filter(date__lte=until)
    rows = list(rows)
    return {
        "labels": [row.date.isoformat() for row in rows],
        "series": {field: [_number(field, getattr(row, field)) for row in rows] for field in KPIS},
        "approximate": [row.date.isoformat() for row in rows if row.approximate],
        "weekly": [row.date.isoformat() for row in rows if row.period_days > 1],
    }


def segment_charts(segment: Segment, since: dt.date | None = None, until: dt.date | None = None) -> dict:
    """The four charts of a segment's metrics page, ready for Chart.js."""
    data = segment_series(segment, since, until)
    series = data["series"]

    def line(field, colour, axis="y"):
        return {"label": str(KPIS[field]), "data": series[field], "borderColor": colour, "backgroundColor": colour,
                "yAxisID": axis, "type": "line", "pointRadius": 0, "borderWidth": 2, "spanGaps": True}

    def bar(field, colour, sign=1):
        values = [v * sign if v is not None else None for v in series[field]]
        return {"label": str(KPIS[field]), "data": values, "backgroundColor": colour, "type": "bar"}

    return {
        "labels": data["labels"],
        "approximate": data["approximate"],
        "weekly": data["weekly"],
        "charts": [
            {"id": "members", "title": str(_("Members")), "datasets": [line("members", COLOURS[0])]},
            {"id": "flow", "title": str(_("Joins and leaves")), "stacked": True,
             "datasets": [bar("joined", COLOURS[2]), bar("left", COLOURS[3], sign=-1)]},
            {"id": "revenue", "title": str(_("Revenue and orders from members")),
             "datasets": [bar("revenue", COLOURS[0]), line("orders", COLOURS[1], axis="y1")], "dual": True},
            {"id": "kpis", "title": str(_("LTV and AOV")),
             "datasets": [line("ltv", COLOURS[0]), line("aov_customer", COLOURS[1]), line("aov_order", COLOURS[4])]},
            {"id": "habits", "title": str(_("Repeat rate, orders per member, days between purchases")),
             "datasets": [line("repeat_rate", COLOURS[2]), line("avg_orders", COLOURS[5], axis="y1"),
                          line("purchase_interval_days", COLOURS[6], axis="y1")], "dual": True},
        ],
    }


def compare_chart(segments: list[Segment], kpi: str, since: dt.date | None = None, until: dt.date | None = None
                  ) -> dict:
    """One KPI of several segments side by side, on the union of their dates."""
    if kpi not in KPIS:
        raise ValueError(kpi)
    by_segment = {s.pk: segment_series(s, since, until) for s in segments}
    labels = sorted({label for data in by_segment.values() for label in data["labels"]})
    datasets = []
    for index, segment in enumerate(segments):
        data = by_segment[segment.pk]
        values = dict(zip(data["labels"], data["series"][kpi], strict=True))
        colour = COLOURS[index % len(COLOURS)]
        datasets.append({"label": segment.name, "data": [values.get(label) for label in labels],
                         "borderColor": colour, "backgroundColor": colour, "type": "line", "pointRadius": 0,
                         "borderWidth": 2, "spanGaps": True})
    return {"labels": labels, "charts": [{"id": "compare", "title": str(KPIS[kpi]), "datasets": datasets}]}
