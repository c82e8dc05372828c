"""Admin for daily runs, snapshots, journeys and campaigns (charts and insights: metrics/admin_views.py)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ecpower.admin_access import StoreScopedAdmin, StoreScopedInline
from integrations.models import SyncJob
from metrics.admin_views import MetricsAdminViews
from metrics.models import Campaign, Journey, JourneyStage, PipelineRun, SegmentSnapshot


class ReadOnlyAdmin(StoreScopedAdmin):
    def has_add_permission(self, request, *args):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class RunJobInline(StoreScopedInline, admin.TabularInline):
    model = SyncJob
    fk_name = "pipeline_run"
    fields = ("link", "kind", "segment", "status", "stage", "done", "total", "failed", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description=_("job"))
    def link(self, obj: SyncJob) -> str:
        return format_html('<a href="{}">#{}</a>', reverse("admin:integrations_syncjob_change", args=[obj.pk]), obj.pk)


@admin.register(PipelineRun)
class PipelineRunAdmin(ReadOnlyAdmin):
    list_display = ("date", "store", "status", "step", "started_at", "finished_at", "worker")
    list_filter = ("status", "store")
    list_select_related = ("store",)
    date_hierarchy = "date"
    readonly_fields = ("store", "date", "status", "step", "worker", "created_at", "started_at", "heartbeat_at",
                       "finished_at", "error", "summary")
    inlines = (RunJobInline,)


@admin.register(SegmentSnapshot)
class SegmentSnapshotAdmin(MetricsAdminViews, ReadOnlyAdmin):
    change_list_template = "admin/metrics/snapshot_changelist.html"
    list_display = ("date", "segment", "members", "joined", "left", "orders", "revenue", "repeat_rate", "ltv",
                    "aov_customer", "aov_order", "avg_orders", "purchase_interval_days", "approximate", "source")
    list_filter = ("source", "approximate", "segment__store")
    list_select_related = ("segment",)
    search_fields = ("segment__name", "segment__slug")
    date_hierarchy = "date"


class JourneyStageInline(StoreScopedInline, admin.TabularInline):
    model = JourneyStage
    fields = ("position", "segment")
    extra = 3


@admin.register(Journey)
class JourneyAdmin(StoreScopedAdmin):
    list_display = ("name", "store", "stage_names", "transitions")
    list_filter = ("store",)
    inlines = (JourneyStageInline,)

    @admin.display(description=_("transitions"))
    def transitions(self, obj: Journey) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:metrics_journey", args=[obj.pk]),
                           _("Moves in the last 7 days"))

    @admin.display(description=_("stages"))
    def stage_names(self, obj: Journey) -> str:
        return " → ".join(stage.segment.name for stage in obj.stages.select_related("segment"))


@admin.register(Campaign)
class CampaignAdmin(StoreScopedAdmin):
    list_display = ("name", "store", "starts_on", "ends_on", "results")
    list_filter = ("store",)
    filter_horizontal = ("segments",)
    date_hierarchy = "starts_on"

    @admin.display(description=_("results"))
    def results(self, obj: Campaign) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:metrics_campaign", args=[obj.pk]),
                           _("Targets vs holdout"))
