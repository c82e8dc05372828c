"""Admin pages of metrics: a segment's charts, the compare view and the insight pages, each with CSV.

Every page reads through ``metrics.charts`` and ``metrics.insights``; a page and its CSV show the
same table (``Table``), so the download is what the user sees.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass, field

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from ecpower.admin_access import admin_stores, require_write, scoped, scoped_object_or_404
from ecpower.commerce.models import CustomerTagEvent, Store
from metrics import charts, insight_reports, insights
from metrics.models import Campaign, InsightKind, InsightReport, Journey, SegmentSnapshot
from metrics.snapshots import approximate_note
from segments import rfm
from segments.models import Segment, SegmentKind


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list] = field(default_factory=list)
    note: str = ""


def _csv(name: str, table: Table) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}-{timezone.localdate():%Y%m%d}.csv"'
    response.write("\ufeff")  # Excel opens UTF-8 with a BOM correctly
    writer = csv.writer(response)
    writer.writerow(table.header)
    writer.writerows(["" if v is None else v for v in row] for row in table.rows)
    return response


def _date(request: HttpRequest, name: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(request.GET.get(name, ""))
    except ValueError:
        return None


def _percent(value) -> str:
    return "" if value is None else f"{float(value) * 100:.1f}%"


def segment_admin_url(segment: Segment) -> str:
    name = "conditionsegment" if segment.kind == SegmentKind.CONDITION else "listsegment"
    return reverse(f"admin:segments_{name}_change", args=[segment.pk])


class MetricsAdminViews:
    """Mixed into the snapshot admin: its URLs carry the metrics pages."""

    def get_urls(self):
        view = self.admin_site.admin_view
        extra = [
            path("segment/<int:pk>/", view(self.segment_view), name="metrics_segment"),
            path("segment/<int:pk>/tags/", view(self.tags_view), name="metrics_tags"),
            path("segment/<int:pk>/products/", view(self.products_view), name="metrics_products"),
            path("segment/<int:pk>/attributes/", view(self.attributes_view), name="metrics_attributes"),
            path("tier-movement/", view(self.tier_movement_view), name="metrics_tier_movement"),
            path("compare/", view(self.compare_view), name="metrics_compare"),
            path("cohorts/", view(self.cohorts_view), name="metrics_cohorts"),
            path("rfm/", view(self.rfm_view), name="metrics_rfm"),
            path("insight-report/<int:pk>/", view(self.insight_report_view), name="metrics_insight_report"),
            path("journey/<int:pk>/", view(self.journey_view), name="metrics_journey"),
            path("campaign/<int:pk>/", view(self.campaign_view), name="metrics_campaign"),
        ]
        return extra + super().get_urls()

    def _context(self, request, title: str, **extra) -> dict:
        segment = extra.get("segment")
        return {**self.admin_site.each_context(request), "opts": self.opts, "title": title,
                "segment_url": segment_admin_url(segment) if segment else "", **extra}

    def _table_page(self, request, title: str, tables: list[Table], name: str, **extra):
        if request.GET.get("format") == "csv":
            return _csv(name, tables[0])
        query = request.GET.copy()
        query["format"] = "csv"
        return TemplateResponse(request, "admin/metrics/tables.html", self._context(
            request, title, tables=tables, csv_url=f"?{query.urlencode()}", **extra))

    # A segment's metrics ------------------------------------------------------------------------

    def segment_view(self, request: HttpRequest, pk: int):
        segment = scoped_object_or_404(request, Segment.objects.select_related("store"), pk=pk)
        if request.method == "POST":
            from metrics.tasks import backfill_start

            require_write(request, segment.store_id)
            job = backfill_start(store=segment.store, segment=segment, user=request.user)
            self.message_user(request, _("Rebuilding the history of %(name)s.") % {"name": segment.name},
                              messages.SUCCESS)
            return redirect(reverse("admin:integrations_syncjob_change", args=[job.pk]))
        since, until = _date(request, "since"), _date(request, "until")
        snapshots = SegmentSnapshot.objects.filter(segment=segment).order_by("-date")
        if request.GET.get("format") == "csv":
            header = ["date", "period_days", *charts.KPIS, "buyers", "approximate"]
            rows = [[s.date.isoformat(), s.period_days, *(getattr(s, k) for k in charts.KPIS), s.buyers,
                     int(s.approximate)] for s in snapshots.order_by("date")]
            return _csv(f"{segment.slug}-metrics", Table("", header, rows))
        latest = snapshots.first()
        context = self._context(
            request, _("Metrics of %(name)s") % {"name": segment.name}, segment=segment,
            chart_data=charts.segment_charts(segment, since, until), latest=latest,
            recent=list(snapshots[:14]), since=since, until=until,
            approximate_days=snapshots.filter(approximate=True).count(),
            approximate_note=approximate_note(
                "tags_before_history" if CustomerTagEvent.objects.filter(store=segment.store).exists()
                else "tags_without_history"),
        )
        return TemplateResponse(request, "admin/metrics/segment_metrics.html", context)

    def compare_view(self, request: HttpRequest):
        ids = [int(i) for i in request.GET.getlist("ids") + request.GET.get("id", "").split(",") if str(i).isdigit()]
        chosen = list(scoped(request, Segment.objects.filter(pk__in=ids)).select_related("store").order_by("name"))
        stores = admin_stores(request).order_by("name")
        store = chosen[0].store if chosen else stores.filter(pk=request.GET.get("store") or None).first()
        store = store or stores.first()
        chosen = [s for s in chosen if store and s.store_id == store.pk]
        kpi = request.GET.get("kpi") if request.GET.get("kpi") in charts.KPIS else "members"
        since, until = _date(request, "since"), _date(request, "until")
        data = charts.compare_chart(chosen, kpi, since, until)
        if request.GET.get("format") == "csv":
            rows = [[label, *(d["data"][i] for d in data["charts"][0]["datasets"])]
                    for i, label in enumerate(data["labels"])]
            return _csv(f"compare-{kpi}", Table("", ["date", *(s.slug for s in chosen)], rows))
        query = request.GET.copy()
        query["format"] = "csv"
        context = self._context(
            request, _("Compare segments"), chart_data=data, store=store, stores=stores,
            segments=Segment.objects.filter(store=store).order_by("kind", "name") if store else [],
            chosen={s.pk for s in chosen}, kpi=kpi, kpis=[(k, str(v)) for k, v in charts.KPIS.items()],
            since=since, until=until, csv_url=f"?{query.urlencode()}" if chosen else "",
        )
        return TemplateResponse(request, "admin/metrics/compare.html", context)

    # Insights ------------------------------------------------------------------------------------

    def tags_view(self, request: HttpRequest, pk: int):
        segment = scoped_object_or_404(request, Segment.objects.select_related("store"), pk=pk)
        rows = insights.popular_tags(segment)
        table = Table(_("Most common customer tags (top 100)"),
                      [_("Tag"), _("Members with it"), _("Share of members"), _("Customers in store"),
                       _("Share of store"), _("Lift")],
                      [[r["name"], r["members"], _percent(r["share"]), r["store_customers"],
                        _percent(r["store_share"]), r["lift"]] for r in rows],
                      _("Lift: how much more common the tag is in the segment than in the whole store."))
        return self._table_page(request, _("Popular tags in %(name)s") % {"name": segment.name}, [table],
                                f"{segment.slug}-tags", segment=segment)

    def products_view(self, request: HttpRequest, pk: int):
        segment = scoped_object_or_404(request, Segment.objects.select_related("store"), pk=pk)
        header = [_("Product"), _("Orders"), _("Buyers"), _("Units"), _("Revenue")]
        found = insights.segment_products(segment, exact=request.GET.get("exact") == "1")
        note = ""
        if found.sampled:
            note = _("Estimated from %(sampled)s members drawn at random from %(members)s: every figure is the "
                     "sample's times %(scale)s, rounded; the order of the rows is the sample's.") % {
                "sampled": f"{found.sampled:,}", "members": f"{found.members:,}", "scale": f"{found.scale:.2f}"}
        products = Table(_("Top products"), header, [[r["product_name"], r["orders"], r["buyers"], r["units"],
                                                      r["revenue"]] for r in found.products], note)
        types = Table(_("Top product types"), [_("Product type"), *header[1:]],
                      [[r["type_name"] or "—", r["orders"], r["buyers"], r["units"], r["revenue"]]
                       for r in found.types], note)
        exact_url = ""
        if found.sampled:
            query = request.GET.copy()
            query["exact"] = "1"
            exact_url = f"?{query.urlencode()}"
        name = f"{segment.slug}-products" + ("-estimated" if found.sampled else "")  # the CSV says so too
        return self._table_page(request, _("What %(name)s buys") % {"name": segment.name}, [products, types],
                                name, segment=segment, exact_url=exact_url)

    def attributes_view(self, request: HttpRequest, pk: int):
        from integrations.aitrillion.mappings import attribute_distribution
        from integrations.models import MappedAttribute

        segment = scoped_object_or_404(request, Segment.objects.select_related("store"), pk=pk)
        members = segment.member_count or 0
        in_store = attribute_distribution(store=segment.store)
        tables = []
        for attribute, rows in attribute_distribution(store=segment.store, segment=segment).items():
            store_counts = dict(in_store.get(attribute, []))
            tables.append(Table(str(MappedAttribute(attribute).label),
                                [_("Value"), _("Members"), _("Share of members"), _("Customers in store")],
                                [[value, n, _percent(n / members if members else None), store_counts.get(value, 0)]
                                 for value, n in rows]))
        if not tables:
            tables = [Table(_("Partner attributes"), [_("Value"), _("Members")], [],
                            _("No tag mappings yet: add them under Integrations › Tag mappings."))]
        return self._table_page(request, _("Partner attributes of %(name)s") % {"name": segment.name}, tables,
                                f"{segment.slug}-attributes", segment=segment)

    def tier_movement_view(self, request: HttpRequest):
        from integrations.aitrillion.mappings import ATTRIBUTES, attribute_movement
        from segments.selectors import store_today

        store, _segment = self._store_and_segment(request)
        attribute = request.GET.get("attribute") if request.GET.get("attribute") in ATTRIBUTES else ATTRIBUTES[0]
        end = _date(request, "end") or (store_today(store) if store else timezone.localdate())
        start = _date(request, "start") or end - dt.timedelta(days=7)
        rows = []
        if store is not None:
            movement = attribute_movement(
                store=store, attribute=attribute, start=dt.datetime.combine(start, dt.time.min, tzinfo=store.zone),
                end=dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=store.zone))
            none = _("(none)")
            rows = [[a or none, b or none, n] for (a, b), n in sorted(movement.moves.items(), key=lambda i: -i[1])]
        table = Table(_("Customers who moved"), [_("From"), _("To"), _("Customers")], rows,
                      _("%(start)s – %(end)s, from the tag history (it starts with the store's first import).")
                      % {"start": start, "end": end})
        return self._table_page(request, _("Tier movement"), [table], "tier-movement", store=store,
                                window=(start, end), movement=True)

    def _store_and_segment(self, request) -> tuple[Store | None, Segment | None]:
        segment = scoped(request, Segment.objects.select_related("store")).filter(
            pk=request.GET.get("segment") or None).first()
        stores = admin_stores(request).order_by("name")
        store = segment.store if segment else stores.filter(pk=request.GET.get("store") or None).first()
        return store or stores.first(), segment

    def _kept_report(self, request: HttpRequest, store: Store | None, segment: Segment | None,
                     kind: str) -> InsightReport | None:
        """A large store's (or segment's) kept report of ``kind``, with a new computing queued where it is due;
        a POST asks for a new one whatever the day. None where the page computes the table itself."""
        if store is None or not insight_reports.insight_report_wanted(store, segment):
            return None
        return insight_reports.insight_report_request(store=store, segment=segment, kind=kind,
                                                      fresh=request.method == "POST")

    def _kept_context(self, kept: InsightReport | None) -> dict:
        if kept is None:
            return {}
        return {"kept": kept, "kept_status_url": reverse("admin:metrics_insight_report", args=[kept.pk])}

    def insight_report_view(self, request: HttpRequest, pk: int):
        """How a kept report's computing goes, for its page to follow (JSON)."""
        report = scoped_object_or_404(request, InsightReport.objects.all(), pk=pk)
        return JsonResponse({
            "status": report.status, "status_label": report.get_status_display(),
            "computed_at": report.computed_at.isoformat() if report.computed_at else None,
            "seconds": report.seconds, "error": report.error,
        })

    def cohorts_view(self, request: HttpRequest):
        store, segment = self._store_and_segment(request)
        kept = self._kept_report(request, store, segment, InsightKind.COHORTS)
        if request.method == "POST":
            return redirect(request.get_full_path())
        months = insight_reports.COHORT_MONTHS
        if kept is not None:
            found = insight_reports.cohorts_kept(kept)
        else:
            found = insights.cohorts(store, segment, months=months) if store else []
        offsets = list(range(months + 1))
        header = [_("First purchase"), _("Customers"), *(f"+{k}" for k in offsets)]
        ltv = Table(_("Cumulative LTV per customer"), header,
                    [[c.month.strftime("%Y-%m"), c.customers, *(cell["ltv"] for cell in c.cells)] for c in found],
                    _("Months since the first purchase, in the store's time zone; counted orders, net of refunds."))
        repeat = Table(_("Repeat rate"), header, [[c.month.strftime("%Y-%m"), c.customers,
                                                  *(_percent(cell["repeat_rate"]) for cell in c.cells)]
                                                 for c in found])
        orders = Table(_("Orders per customer"), header, [[c.month.strftime("%Y-%m"), c.customers,
                                                         *(cell["orders_per_customer"] for cell in c.cells)]
                                                        for c in found])
        title = _("Cohorts by first purchase month") + (f" — {segment.name}" if segment else "")
        return self._table_page(request, title, [ltv, repeat, orders], "cohorts", segment=segment, store=store,
                                **self._kept_context(kept))

    def rfm_view(self, request: HttpRequest):
        store, segment = self._store_and_segment(request)
        kept = self._kept_report(request, store, segment, InsightKind.RFM)
        if request.method == "POST":
            return redirect(request.get_full_path())
        if kept is not None:
            summary = insight_reports.rfm_kept(kept)
        else:
            summary = insights.rfm_summary(store, segment) if store else None
        table = Table(_("RFM groups"), [_("Group"), _("Customers"), _("Share"), _("Orders"), _("Spent"),
                                        _("Average days since last order")],
                      [[g["label"], g["customers"], _percent(g["share"]), g["orders"], g["spent"],
                        g["avg_days_since_last_order"]] for g in (summary.groups if summary else [])])
        if request.GET.get("format") == "csv":
            return _csv("rfm", table)
        peak = max([max(row) for row in summary.grid.values()] or [0]) if summary else 0
        grid = [(fm, [(count, rfm.GROUP_LABELS[rfm.GRID[fm][r]], (4 * count // peak) if peak else 0)
                      for r, count in enumerate(cells)]) for fm, cells in (summary.grid.items() if summary else [])]
        context = self._context(request, _("RFM analysis") + (f" — {segment.name}" if segment else ""),
                                segment=segment, store=store, table=table, grid=grid,
                                summary=summary, csv_url="?" + request.GET.urlencode() + "&format=csv",
                                **self._kept_context(kept))
        return TemplateResponse(request, "admin/metrics/rfm.html", context)

    def journey_view(self, request: HttpRequest, pk: int):
        journey = scoped_object_or_404(request, Journey.objects.select_related("store"), pk=pk)
        report = insights.journey_transitions(journey, _date(request, "start"), _date(request, "end"))
        names = {s.pk: s.name for s in report.stages} | {insights.OUTSIDE: _("(outside the journey)")}
        keys = [s.pk for s in report.stages] + [insights.OUTSIDE]
        matrix = Table(_("Customers who moved (rows: from, columns: to)"), [_("From \\ to"), *(names[k] for k in keys)],
                       [[names[source], *counts] for source, counts in report.matrix()],
                       _("%(start)s – %(end)s. A move is a join of the target stage by a customer who was in the "
                         "source stage the day before.") % {"start": report.start, "end": report.end})
        now = Table(_("Members now"), [_("Stage"), _("Members")],
                    [[s.name, report.members[s.pk]] for s in report.stages])
        return self._table_page(request, _("Journey: %(name)s") % {"name": journey.name}, [matrix, now],
                                f"journey-{journey.pk}", journey=journey, window=(report.start, report.end))

    def campaign_view(self, request: HttpRequest, pk: int):
        campaign = scoped_object_or_404(request, Campaign.objects.select_related("store"), pk=pk)
        header = [_("Segment"), _("Group"), _("Customers"), _("Buyers"), _("Conversion"), _("Orders"), _("Revenue"),
                  _("Revenue per member"), _("Lift"), _("95 percent interval of the difference")]
        rows = []
        for segment in campaign.segments.order_by("name"):
            result = insights.campaign_results(segment, campaign.starts_on, campaign.ends_on)
            conversion, conversion_ci, conversion_lift = result.conversion_difference
            revenue, revenue_ci, revenue_lift = result.revenue_difference
            for label, group in ((_("targets"), result.targets), (_("holdout"), result.holdout)):
                if group is None:
                    continue
                rows.append([segment.name, label, group.customers, group.buyers, _percent(group.conversion),
                             group.orders, group.revenue, _round(group.revenue_per_member), "", ""])
            if conversion is not None:
                rows.append([segment.name, _("conversion: targets − holdout"), "", "", _percent(conversion), "", "",
                             "", _percent(conversion_lift), f"{_percent(conversion_ci[0])} … {_percent(conversion_ci[1])}"])
                rows.append([segment.name, _("revenue per member: targets − holdout"), "", "", "", "", "",
                             _round(revenue), _percent(revenue_lift),
                             f"{_round(revenue_ci[0])} … {_round(revenue_ci[1])}"])
        table = Table(_("Targets against holdout"), header, rows,
                      _("%(start)s – %(end)s, counted orders net of refunds. An interval that does not contain 0 "
                        "is a difference unlikely to be chance.") % {"start": campaign.starts_on,
                                                                     "end": campaign.ends_on})
        return self._table_page(request, _("Campaign: %(name)s") % {"name": campaign.name}, [table],
                                f"campaign-{campaign.pk}", campaign=campaign)


def _round(value) -> str:
    return "" if value is None else f"{value:,.0f}"
