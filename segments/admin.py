"""The segment builder and segment pages of the admin.

The builder posts the query to ``preview/`` as the user types and shows the located problems or
the live member count, a sample and the JSON tree. Saving goes through ``segments.services`` (a
new version when the rule changed) and queues a recompute.
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db.models import Exists, OuterRef, Q
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from ecpower.admin_access import (
    StoreScopedAdmin,
    admin_stores,
    require_write,
    scoped,
    scoped_object_or_404,
    writable_stores,
)
from ecpower.admin_deletion import CountedDeletionAdmin
from ecpower.commerce.models import Customer
from segments import exports, rules
from segments.admin_lists import ListSegmentAdminMixin
from segments.catalogue import catalogue, store_templates
from segments.lists import list_create_from_segment
from segments.models import (
    ConditionSegment,
    ListOrigin,
    ListSegment,
    Membership,
    MembershipEvent,
    Segment,
    SegmentGroup,
    SegmentKind,
    SegmentStatus,
)
from segments.selectors import (
    BUILDER_SAMPLE_SIZE,
    segment_explain,
    segment_members,
    segment_preview,
    segment_recent_events,
    segments_referring_to,
)
from segments.services import (
    rule_from_input,
    segment_create,
    segment_duplicate,
    segment_update,
    templates_add,
    unique_slug,
)
from segments.superseding import PreviewSuperseded, preview_key, superseding
from segments.tasks import segment_recompute_enqueue

STATUS_COLOURS = {
    SegmentStatus.NEW: "#888", SegmentStatus.QUEUED: "#b58105", SegmentStatus.RUNNING: "#1f6fb2",
    SegmentStatus.SUCCEEDED: "#2e7d32", SegmentStatus.FAILED: "#c62828",
}


@admin.register(SegmentGroup)
class SegmentGroupAdmin(StoreScopedAdmin):
    list_display = ("name", "store")
    list_filter = ("store",)
    search_fields = ("name",)
    actions = ("journey_selected",)

    @admin.action(description=_("Make a journey of each selected group"), permissions=["change"])
    def journey_selected(self, request, queryset):
        from metrics.services import journey_from_group

        for group in queryset.filter(store__in=writable_stores(request)):
            journey = journey_from_group(group)
            url = reverse("admin:metrics_journey_change", args=[journey.pk])
            self.message_user(request, format_html(gettext('Journey <a href="{}">{}</a>: order its stages there.'),
                                                   url, journey.name), messages.SUCCESS)


class ConditionSegmentForm(forms.ModelForm):
    query = forms.CharField(
        label=_("Query"),
        widget=forms.Textarea(attrs={"rows": 4, "class": "vLargeTextField segment-query", "spellcheck": "false"}),
        help_text=_("For example: number_of_orders >= 2 AND last_order_date < -90d. See docs/segments.md."),
    )

    class Meta:
        model = ConditionSegment
        fields = ("store", "name", "slug", "description", "query", "shopify_tag", "groups")

    def clean(self):
        cleaned = super().clean()
        editing = self.instance.pk is not None  # store and slug are read-only then
        store = self.instance.store if editing else cleaned.get("store")
        slug = self.instance.slug if editing else cleaned.get("slug") or ""
        query = cleaned.get("query")
        if store and query:
            try:
                cleaned["rule"] = rule_from_input(store=store, query=query, slug=slug)
            except rules.InvalidRule as exc:
                self.add_error("query", [str(problem) for problem in exc.problems])
        return cleaned


class ExportForm(forms.Form):
    columns = forms.MultipleChoiceField(label=_("Columns"), choices=list(exports.COLUMNS.items()),
                                        initial=list(exports.DEFAULT_COLUMNS), widget=forms.CheckboxSelectMultiple)
    encoding = forms.ChoiceField(label=_("Encoding"), widget=forms.RadioSelect, initial="utf-8-sig", choices=[
        ("utf-8-sig", _("UTF-8 with BOM (Excel)")),
        ("cp932", _("Shift_JIS (older Excel on Windows)")),
        ("utf-8", _("UTF-8 (other tools)")),
    ])
    holdout = forms.ChoiceField(label=_("Held-out members"), widget=forms.RadioSelect, initial="all", choices=[
        ("all", _("Include them (the holdout column marks them)")),
        ("exclude", _("Leave them out (campaign targets only)")),
        ("only", _("Only them")),
    ])


class SegmentAdminBase(CountedDeletionAdmin, StoreScopedAdmin):
    list_display = ("name", "slug", "status_badge", "member_count", "last_computed_at", "duration", "store")
    list_filter = ("store", "status", "groups")
    search_fields = ("name", "slug", "description", "query")
    list_select_related = ("store",)
    kind = SegmentKind.CONDITION
    actions = ("snapshot_selected", "combine_selected", "export_selected", "tag_sync_selected", "tag_dry_run_selected",
               "tag_remove_selected")

    def get_queryset(self, request):
        return super().get_queryset(request).filter(kind=self.kind)

    def _url_name(self, view: str) -> str:
        return f"admin:{self.opts.app_label}_{self.opts.model_name}_{view}"

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        extra = [
            path("export/", self.admin_site.admin_view(self.export_view), name=f"{prefix}_export"),
            path("<int:pk>/members/", self.admin_site.admin_view(self.members_view), name=f"{prefix}_members"),
        ]
        return extra + super().get_urls()

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, obj: Segment):
        title = obj.last_error or obj.get_status_display()
        return format_html('<span class="segment-status" style="color:{}" title="{}">● {}</span>',
                           STATUS_COLOURS.get(obj.status, "#888"), title, obj.get_status_display())

    @admin.display(description=_("duration"), ordering="last_duration_ms")
    def duration(self, obj: Segment):
        if obj.last_duration_ms is None:
            return "—"
        return f"{obj.last_duration_ms / 1000:.2f} s"

    # Views ---------------------------------------------------------------------------------

    def members_view(self, request: HttpRequest, pk: int):
        segment = scoped_object_or_404(request, Segment.objects.all(), pk=pk, kind=self.kind)
        members = segment_members(segment).annotate(in_holdout=Exists(
            Membership.objects.filter(segment=segment, customer=OuterRef("pk"), holdout=True)
        )).order_by("-amount_spent", "id")
        search = request.GET.get("q", "").strip()
        if search:
            members = members.filter(
                Q(email__icontains=search) | Q(first_name__icontains=search) | Q(last_name__icontains=search)
                | Q(phone__icontains=search)
            )
        paginator = Paginator(members, 50)
        if not search:  # the count kept by every recompute, not a count of every member (1.2 s at 600,000)
            paginator.count = segment.member_count
        page = paginator.get_page(request.GET.get("page"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "segment": segment,
            "title": gettext("Members of %(name)s") % {"name": segment.name},
            "page": page,
            "search": search,
        }
        return TemplateResponse(request, "admin/segments/segment_members.html", context)

    def export_view(self, request: HttpRequest):
        """The export form for ``?ids=1,2``; submitting it downloads the CSV, streamed."""
        ids = [int(i) for i in request.GET.get("ids", "").split(",") if i.strip().isdigit()]
        segments = list(scoped(request, Segment.objects.filter(pk__in=ids)).select_related("store").order_by("name"))
        if not segments:
            self.message_user(request, gettext("Choose the segments to export."), messages.WARNING)
            return redirect(reverse(self._url_name("changelist")))
        if len({s.store_id for s in segments}) > 1:
            self.message_user(request, gettext("Export segments of one store at a time."), messages.ERROR)
            return redirect(reverse(self._url_name("changelist")))
        form = ExportForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            holdout = {"all": None, "only": True, "exclude": False}[form.cleaned_data["holdout"]]
            export = exports.MemberExport(segments, columns=form.cleaned_data["columns"],
                                          encoding=form.cleaned_data["encoding"], holdout=holdout)
            charset = "shift_jis" if export.encoding == "cp932" else "utf-8"
            response = StreamingHttpResponse(export.chunks(), content_type=f"text/csv; charset={charset}")
            name = segments[0].slug if len(segments) == 1 else f"{len(segments)}-segments"
            stamp = timezone.localtime().strftime("%Y%m%d")
            response["Content-Disposition"] = f'attachment; filename="{name}-{stamp}.csv"'
            return response
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Export members"),
            "segments": segments,
            "form": form,
        }
        return TemplateResponse(request, "admin/segments/segment_export.html", context)

    def delete_view(self, request, object_id, extra_context=None):
        segment = self.get_object(request, object_id)
        users = segments_referring_to(segment) if segment else []
        if users:
            self.message_user(request, gettext("%(name)s cannot be deleted: %(users)s use it in in_segment().")
                              % {"name": segment.name, "users": ", ".join(u.name for u in users)}, messages.ERROR)
            return redirect(reverse(self._url_name("change"), args=[segment.pk]))
        return super().delete_view(request, object_id, extra_context)

    def delete_queryset(self, request, queryset):
        chosen = set(queryset.values_list("pk", flat=True))
        blocked = {s.name: [u.name for u in segments_referring_to(s) if u.pk not in chosen] for s in queryset}
        blocked = {name: users for name, users in blocked.items() if users}
        if blocked:
            self.message_user(request, gettext("Nothing deleted: %(list)s are used by other segments.")
                              % {"list": ", ".join(blocked)}, messages.ERROR)
            return
        super().delete_queryset(request, queryset)

    # Actions -------------------------------------------------------------------------------

    def _writable(self, request, queryset):
        """The selected segments of stores the user may change; says so when some were left out."""
        allowed = queryset.filter(store__in=writable_stores(request))
        if allowed.count() < queryset.count():
            self.message_user(request, gettext("Segments of stores you may only view were left out."),
                              messages.WARNING)
        return allowed

    @admin.action(description=_("Snapshot selected to lists"), permissions=["change"])
    def snapshot_selected(self, request, queryset):
        queryset = self._writable(request, queryset)
        stamp = timezone.localtime().strftime("%Y%m%d")
        made = []
        for segment in queryset.select_related("store"):
            slug = unique_slug(segment.store, f"{segment.slug}-{stamp}")
            try:
                made.append(list_create_from_segment(
                    source=segment, slug=slug, user=request.user,
                    name=gettext("%(name)s on %(date)s") % {"name": segment.name, "date": stamp}))
            except rules.InvalidRule as exc:
                self.message_user(request, f"{segment.name}: {exc}", messages.ERROR)
        if made:
            self.message_user(request, gettext("%(n)d lists made: %(names)s.")
                              % {"n": len(made), "names": ", ".join(m.name for m in made)}, messages.SUCCESS)

    @admin.action(description=_("Combine selected into a list"), permissions=["change"])
    def combine_selected(self, request, queryset):
        chosen = list(self._writable(request, queryset).order_by("slug"))
        if not chosen:
            return None
        if len({s.store_id for s in chosen}) > 1:
            self.message_user(request, gettext("Combine segments of one store at a time."), messages.ERROR)
            return None
        query = urlencode({"store": chosen[0].store_id, "origin": ListOrigin.EXPRESSION,
                           "expression": " | ".join(s.slug for s in chosen)})
        return redirect(f"{reverse('admin:segments_listsegment_add')}?{query}")

    def _tag_jobs(self, request, queryset, **kwargs):
        from integrations.http import PartnerError
        from integrations.jobs import tag_sync_start

        for segment in self._writable(request, queryset).select_related("store"):
            try:
                job = tag_sync_start(segment=segment, user=request.user, **kwargs)
            except PartnerError as exc:
                self.message_user(request, f"{segment.name}: {exc}", messages.ERROR)
                continue
            url = reverse("admin:integrations_syncjob_change", args=[job.pk])
            self.message_user(request, format_html(gettext('{}: job queued, <a href="{}">follow its progress</a>.'),
                                                   segment.name, url), messages.SUCCESS)

    @admin.action(description=_("Push tag to Shopify"), permissions=["change"])
    def tag_sync_selected(self, request, queryset):
        self._tag_jobs(request, queryset)

    @admin.action(description=_("Preview tag changes (dry run)"), permissions=["change"])
    def tag_dry_run_selected(self, request, queryset):
        self._tag_jobs(request, queryset, dry_run=True)

    @admin.action(description=_("Remove tag from Shopify"), permissions=["change"])
    def tag_remove_selected(self, request, queryset):
        self._tag_jobs(request, queryset, remove=True)

    @admin.action(description=_("Export members of selected (CSV)"))
    def export_selected(self, request, queryset):
        ids = ",".join(str(pk) for pk in queryset.values_list("pk", flat=True))
        return redirect(f"{reverse(self._url_name('export'))}?ids={ids}")


@admin.register(ConditionSegment)
class ConditionSegmentAdmin(SegmentAdminBase):
    form = ConditionSegmentForm
    change_form_template = "admin/segments/segment_builder.html"
    change_list_template = "admin/segments/segment_changelist.html"
    actions = ("recompute_selected", "duplicate_selected", *SegmentAdminBase.actions)
    readonly_fields = ("computed_state",)
    prepopulated_fields = {"slug": ("name",)}
    filter_horizontal = ("groups",)

    def get_fieldsets(self, request, obj=None):
        main = ("store", "name", "slug", "description", "query")
        sets = [(None, {"fields": main}), (_("Shopify and groups"), {"fields": ("shopify_tag", "groups")})]
        if obj is not None:
            sets.append((_("Last computation"), {"fields": ("computed_state",)}))
        return sets

    def get_prepopulated_fields(self, request, obj=None):
        return {} if obj else self.prepopulated_fields

    def get_readonly_fields(self, request, obj=None):
        return ("store", "slug", "computed_state") if obj else ()

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is not None:
            form.base_fields["query"].initial = obj.query
        return form

    def get_changeform_initial_data(self, request):
        initial = super().get_changeform_initial_data(request)
        if "store" not in initial:
            first = writable_stores(request).order_by("pk").first()
            if first:
                initial["store"] = first.pk
        return initial

    @admin.display(description=_("state"))
    def computed_state(self, obj: Segment):
        return format_html(
            "{} · {} {} · {} · {}",
            obj.get_status_display(), obj.member_count, gettext("members"),
            timezone.localtime(obj.last_computed_at).strftime("%Y-%m-%d %H:%M") if obj.last_computed_at else "—",
            obj.last_error or gettext("no errors"),
        )

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            saved = segment_update(segment=obj, rule=data["rule"], user=request.user, name=data["name"],
                                   description=data["description"], shopify_tag=data["shopify_tag"])
        else:
            saved = segment_create(store=data["store"], name=data["name"], slug=data["slug"], rule=data["rule"],
                                   description=data["description"], shopify_tag=data["shopify_tag"],
                                   user=request.user)
        obj.pk, obj.id = saved.pk, saved.pk
        obj.refresh_from_db()

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        segment_recompute_enqueue(form.instance)

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        extra = [
            path("preview/", self.admin_site.admin_view(self.preview_view), name=f"{prefix}_preview"),
            path("add-templates/", self.admin_site.admin_view(self.templates_view), name=f"{prefix}_templates"),
            path("<int:pk>/recompute/", self.admin_site.admin_view(self.recompute_view),
                 name=f"{prefix}_recompute"),
            path("<int:pk>/explain/<int:customer_id>/", self.admin_site.admin_view(self.explain_view),
                 name=f"{prefix}_explain"),
        ]
        return extra + super().get_urls()

    # Views ---------------------------------------------------------------------------------

    def preview_view(self, request: HttpRequest):
        """POST store + query (or JSON rule) → problems, or count, sample, canonical query and tree."""
        if request.method != "POST":
            return JsonResponse({"error": "POST a store and a query"}, status=405)
        store = admin_stores(request).filter(pk=request.POST.get("store") or 0).first()
        if store is None:
            return JsonResponse({"ok": False, "problems": [{"message": gettext("Choose a store first.")}]})
        slug = request.POST.get("slug", "")
        try:
            if request.POST.get("rule"):
                tree = rule_from_input(store=store, rule=json.loads(request.POST["rule"]), slug=slug)
            else:
                tree = rule_from_input(store=store, query=request.POST.get("query", ""), slug=slug)
            # A large store's count over orders is estimated first; the page then asks for the exact one.
            # A newer preview from the same page cancels this one if it is still running.
            with superseding(preview_key(request.user.pk, request.POST.get("page", ""))):
                preview = segment_preview(store=store, tree=tree, sample_size=BUILDER_SAMPLE_SIZE,
                                          estimate=request.POST.get("exact") != "1")
        except PreviewSuperseded:
            return JsonResponse({"ok": False, "superseded": True}, status=409)
        except rules.InvalidRule as exc:
            return JsonResponse({"ok": False, "problems": [p.as_dict() for p in exc.problems]})
        except json.JSONDecodeError as exc:
            return JsonResponse({"ok": False, "problems": [{"message": f"JSON: {exc}"}]})
        return JsonResponse({
            "ok": True,
            "count": preview.count,
            "estimated": preview.estimated,
            "margin": preview.margin,
            "sampled": preview.sampled,
            "as_of": preview.as_of.isoformat(),
            "query": preview.query,
            "tree": preview.tree,
            "sample": [{"id": c.pk, "name": str(c), "email": c.email, "orders": c.orders_count,
                        "spent": str(c.amount_spent)} for c in preview.sample],
        })

    def templates_view(self, request: HttpRequest):
        stores = writable_stores(request).order_by("name")
        store = stores.filter(pk=request.POST.get("store") or request.GET.get("store") or 0).first() or stores.first()
        if request.method == "POST" and store is not None:
            wanted = request.POST.getlist("template")
            created = templates_add(store=store, slugs=wanted, user=request.user)
            for segment in created:
                segment_recompute_enqueue(segment)
            self.message_user(request, gettext("%(n)d segments added from templates; computing them now.")
                              % {"n": len(created)}, messages.SUCCESS)
            return redirect(reverse("admin:segments_conditionsegment_changelist"))
        existing = set(Segment.objects.filter(store=store).values_list("slug", flat=True)) if store else set()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Add segments from templates"),
            "stores": stores,
            "store": store,
            "templates": [(t, t.slug in existing) for t in (store_templates(store) if store else [])],
        }
        return TemplateResponse(request, "admin/segments/segment_templates.html", context)

    def explain_view(self, request: HttpRequest, pk: int, customer_id: int):
        segment = scoped_object_or_404(request, Segment.objects.all(), pk=pk, kind=SegmentKind.CONDITION)
        customer = get_object_or_404(Customer, pk=customer_id, store_id=segment.store_id)
        explanation = segment_explain(store=segment.store, tree=segment.rule, customer=customer)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "segment": segment,
            "customer": customer,
            "explanation": explanation,
            "title": gettext("Why %(customer)s is or is not in %(segment)s")
            % {"customer": customer, "segment": segment.name},
        }
        return TemplateResponse(request, "admin/segments/segment_explain.html", context)

    def recompute_view(self, request: HttpRequest, pk: int):
        segment = scoped_object_or_404(request, Segment.objects.all(), pk=pk)
        if request.method == "POST":
            require_write(request, segment.store_id)
            segment_recompute_enqueue(segment)
            self.message_user(request, gettext("Recompute of %(name)s queued.") % {"name": segment.name})
        return redirect(reverse("admin:segments_conditionsegment_change", args=[segment.pk]))

    def add_view(self, request, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "segment_templates": catalogue()}
        return super().add_view(request, form_url, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = extra_context or {}
        segment = self.get_object(request, object_id)
        if segment is not None:
            extra_context.update({
                "recent_events": segment_recent_events(segment, 20),
                "versions": segment.versions.select_related("created_by")[:20],
            })
        return super().change_view(request, object_id, form_url, extra_context)

    # Actions -------------------------------------------------------------------------------

    @admin.action(description=_("Recompute selected segments"), permissions=["change"])
    def recompute_selected(self, request, queryset):
        queryset = self._writable(request, queryset)
        for segment in queryset:
            segment_recompute_enqueue(segment)
        self.message_user(request, gettext("%(n)d recomputes queued.") % {"n": queryset.count()})

    @admin.action(description=_("Duplicate selected segments"), permissions=["change"])
    def duplicate_selected(self, request, queryset):
        queryset = self._writable(request, queryset)
        for segment in queryset:
            copy = segment_duplicate(segment=segment, user=request.user)
            segment_recompute_enqueue(copy)
        self.message_user(request, gettext("%(n)d segments duplicated.") % {"n": queryset.count()})


@admin.register(ListSegment)
class ListSegmentAdmin(ListSegmentAdminMixin, SegmentAdminBase):
    """List segments: made with the "Make a list" form or the actions on segments; members fixed."""

    search_fields = ("name", "slug", "description", "query", "expression", "upload__file_name")
    list_select_related = ("store", "created_by")


@admin.register(MembershipEvent)
class MembershipEventAdmin(StoreScopedAdmin):
    list_display = ("date", "kind", "segment", "customer")
    # A date filter, not a date hierarchy: the hierarchy reads the distinct dates of every event on each page
    # (0.95 s at 100,000 customers).
    list_filter = ("kind", "date", "segment__store", "segment")
    search_fields = ("customer__email",)
    list_select_related = ("segment", "customer")
    readonly_fields = ("store", "segment", "customer", "kind", "date", "created_at")
    show_full_result_count = False  # a large store has millions: a filtered page counts its own rows only

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

