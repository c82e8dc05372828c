"""List segments in the admin: make a list (query, snapshot, combination, CSV), read its origin
and match report, export it. Registered from ``segments.admin``.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.widgets import AdminDateWidget
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.dateparse import parse_date
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from ecpower.admin_access import admin_stores, scoped_object_or_404, writable_stores
from ecpower.commerce.models import Store
from ecpower.commerce.shopify_csv import CsvFileError
from segments import exports, rules, set_expressions
from segments.lists import (
    expression_members,
    holdout_share,
    holdout_size,
    list_create_from_csv,
    list_create_from_expression,
    list_create_from_query,
    list_create_from_segment,
)
from segments.models import ListOrigin, ListUpload, Segment, SegmentKind
from segments.selectors import segment_preview
from segments.services import rule_from_input


def builder_expression(any_of: list[str], all_of: list[str], minus: list[str]) -> str:
    """The expression the simple builder means: (any of) & each of all_of - (any of minus)."""

    def group(slugs: list[str]) -> str:
        return f"({' | '.join(slugs)})" if len(slugs) > 1 else slugs[0]

    terms = ([group(any_of)] if any_of else []) + list(all_of)
    if not terms:
        return ""
    text = " & ".join(terms)
    if minus:
        text = f"{text} - {group(minus)}"
    return set_expressions.to_text(set_expressions.parse(text))


class SegmentChoices(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Segment) -> str:
        kind = gettext("list") if obj.kind == SegmentKind.LIST else gettext("segment")
        return f"{obj.name} ({obj.slug}, {kind}, {obj.member_count})"


class ListMakeForm(forms.Form):
    store = forms.ModelChoiceField(Store.objects.order_by("name"), label=_("Store"))
    name = forms.CharField(label=_("Name"), max_length=200)
    slug = forms.SlugField(label=_("Slug"), max_length=100, required=False,
                           help_text=_("Left empty, it is made from the name."))
    description = forms.CharField(label=_("Description"), required=False, widget=forms.Textarea(attrs={"rows": 2}))
    origin = forms.ChoiceField(label=_("Make the list from"), choices=ListOrigin.choices, widget=forms.RadioSelect,
                               initial=ListOrigin.EXPRESSION)
    query = forms.CharField(label=_("Query"), required=False, widget=forms.Textarea(
        attrs={"rows": 3, "class": "vLargeTextField", "spellcheck": "false"}))
    as_of = forms.DateField(label=_("As of"), required=False, widget=AdminDateWidget,
                            help_text=_("Evaluate the query as of this day (default: today)."))
    source = forms.ModelChoiceField(Segment.objects.order_by("name"), label=_("Segment"), required=False)
    any_of = SegmentChoices(Segment.objects.order_by("name"), label=_("Members of any of"), required=False)
    all_of = SegmentChoices(Segment.objects.order_by("name"), label=_("…who are also in each of"), required=False)
    minus = SegmentChoices(Segment.objects.order_by("name"), label=_("…minus members of any of"), required=False)
    expression = forms.CharField(
        label=_("Set expression"), required=False, widget=forms.TextInput(attrs={"class": "vLargeTextField"}),
        help_text=_("| union, & intersection, - difference, parentheses to group; e.g. (vip | line) - unsubscribed. "
                    "Left empty, it is built from the three choices above."))
    csv_file = forms.FileField(label=_("CSV file"), required=False,
                               help_text=_("Email addresses, Shopify customer ids or gid://shopify/Customer/… ids; "
                                           "UTF-8 or Shift_JIS."))
    column = forms.CharField(label=_("Column"), required=False,
                             help_text=_("Name or number of the column to read; left empty, it is detected."))
    holdout_percent = forms.DecimalField(label=_("Hold out (%)"), required=False, min_value=0.01, max_value=99.99,
                                         decimal_places=2)
    seed = forms.IntegerField(label=_("Holdout seed"), required=False, min_value=0,
                              help_text=_("The same seed and members give the same holdout; left empty, one is "
                                          "drawn and stored."))

    def __init__(self, *args, stores=None, **kwargs):
        """``stores``: the stores the user may make lists in (the choices are limited to them)."""
        super().__init__(*args, **kwargs)
        if stores is not None:
            self.fields["store"].queryset = stores.order_by("name")
            for name in ("source", "any_of", "all_of", "minus"):
                self.fields[name].queryset = Segment.objects.filter(store__in=stores).order_by("name")

    def clean(self):
        cleaned = super().clean()
        store, origin = cleaned.get("store"), cleaned.get("origin")
        if store is None or origin is None:
            return cleaned
        chosen = [cleaned.get("source")] + list(cleaned.get("any_of") or []) + list(cleaned.get("all_of") or []) \
            + list(cleaned.get("minus") or [])
        if any(s is not None and s.store_id != store.pk for s in chosen):
            raise forms.ValidationError(gettext("Choose segments of the store %(store)s.") % {"store": store})
        if origin == ListOrigin.QUERY and not (cleaned.get("query") or "").strip():
            self.add_error("query", gettext("Write the query the list is made from."))
        elif origin == ListOrigin.SNAPSHOT and cleaned.get("source") is None:
            self.add_error("source", gettext("Choose the segment to take a snapshot of."))
        elif origin == ListOrigin.EXPRESSION and not (cleaned.get("expression") or "").strip():
            slugs = {key: [s.slug for s in cleaned.get(key) or []] for key in ("any_of", "all_of", "minus")}
            if not (slugs["any_of"] or slugs["all_of"]):
                self.add_error("expression", gettext("Write an expression or choose the segments to combine."))
            else:
                cleaned["expression"] = builder_expression(slugs["any_of"], slugs["all_of"], slugs["minus"])
        elif origin == ListOrigin.CSV:
            upload = cleaned.get("csv_file")
            if upload is None:
                self.add_error("csv_file", gettext("Choose the CSV file."))
            elif upload.size > settings.LIST_CSV_MAX_UPLOAD_BYTES:
                self.add_error("csv_file", gettext("The file is %(size).1f MB; the limit is %(limit).1f MB.")
                               % {"size": upload.size / 1e6, "limit": settings.LIST_CSV_MAX_UPLOAD_BYTES / 1e6})
        return cleaned

    def make(self, user) -> Segment:
        """Make the list; problems become form errors (``forms.ValidationError`` is raised after)."""
        data = self.cleaned_data
        common = {"name": data["name"], "slug": data["slug"], "description": data["description"],
                  "holdout_percent": data["holdout_percent"], "seed": data["seed"], "user": user}
        origin = data["origin"]
        if origin == ListOrigin.QUERY:
            return list_create_from_query(store=data["store"], query=data["query"], as_of=data["as_of"], **common)
        if origin == ListOrigin.SNAPSHOT:
            return list_create_from_segment(source=data["source"], **common)
        if origin == ListOrigin.EXPRESSION:
            return list_create_from_expression(store=data["store"], expression=data["expression"], **common)
        upload = data["csv_file"]
        return list_create_from_csv(store=data["store"], data=upload.read(), file_name=upload.name,
                                    column=data["column"] or None, **common)


PROBLEM_FIELD = {"slug": "slug", "holdout_percent": "holdout_percent"}
ORIGIN_FIELD = {ListOrigin.QUERY: "query", ListOrigin.SNAPSHOT: "source", ListOrigin.EXPRESSION: "expression",
                ListOrigin.CSV: "csv_file"}


class ListSegmentAdminMixin:
    """The list parts of ``segments.admin.ListSegmentAdmin`` (the shared segment views are there)."""

    kind = SegmentKind.LIST
    list_display = ("name", "slug", "list_origin", "member_count", "holdout", "created_at", "created_by", "store")
    list_filter = ("store", "list_origin", "groups")
    change_form_template = "admin/segments/list_change.html"
    fieldsets = [
        (None, {"fields": ("store", "name", "slug", "description")}),
        (_("Members and origin"), {"fields": ("origin_summary", "member_count", "holdout", "upload_report",
                                              "created_by", "created_at")}),
        (_("Shopify and groups"), {"fields": ("shopify_tag", "groups")}),
    ]
    readonly_fields = ("store", "slug", "origin_summary", "member_count", "holdout", "upload_report", "created_by",
                       "created_at")
    filter_horizontal = ("groups",)

    @admin.display(description=_("holdout"), ordering="holdout_percent")
    def holdout(self, obj: Segment):
        if not obj.holdout_percent:
            return "—"
        return gettext("%(share)s %% · %(n)d held out · seed %(seed)s") % {
            "share": obj.holdout_percent.normalize(), "n": obj.holdout_count, "seed": obj.holdout_seed}

    @admin.display(description=_("made from"))
    def origin_summary(self, obj: Segment):
        origin = obj.get_list_origin_display()
        if obj.list_origin == ListOrigin.QUERY:
            detail = format_html("<code>{}</code> · {} {}", obj.query, gettext("as of"), obj.as_of)
        elif obj.list_origin in (ListOrigin.SNAPSHOT, ListOrigin.EXPRESSION):
            detail = format_html("<code>{}</code> · {} {}", obj.expression, gettext("as of"), obj.as_of)
        elif obj.list_origin == ListOrigin.CSV and hasattr(obj, "upload"):
            detail = obj.upload.file_name
        else:
            detail = ""
        return format_html("{}: {}", origin, detail)

    @admin.display(description=_("match report"))
    def upload_report(self, obj: Segment):
        upload = getattr(obj, "upload", None)
        if upload is None:
            return "—"
        facts = [
            (gettext("file"), upload.file_name), (gettext("encoding"), upload.encoding),
            (gettext("column"), upload.column),
            (gettext("header row"), gettext("yes") if upload.has_header else gettext("no")),
            (gettext("rows"), upload.rows), (gettext("matched"), upload.matched),
            (gettext("unmatched"), len(upload.unmatched)), (gettext("duplicates"), len(upload.duplicates)),
            (gettext("blank rows"), upload.blank_rows),
        ]
        table = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", facts)
        link = ""
        if upload.unmatched or upload.duplicates:
            url = reverse("admin:segments_listsegment_match_report", args=[obj.pk])
            link = format_html('<a class="button" href="{}">{}</a>', url,
                               gettext("Download unmatched and duplicate rows (CSV)"))
        return format_html('<table class="match-report">{}</table>{}', table, link)

    def get_urls(self):
        extra = [
            path("<int:pk>/match-report.csv", self.admin_site.admin_view(self.match_report_view),
                 name="segments_listsegment_match_report"),
            path("preview/", self.admin_site.admin_view(self.preview_view), name="segments_listsegment_preview"),
        ]
        return extra + super().get_urls()

    def add_view(self, request: HttpRequest, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = ListMakeForm(request.POST, request.FILES, stores=writable_stores(request))
            if form.is_valid():
                try:
                    made = form.make(request.user)
                except rules.InvalidRule as exc:
                    for problem in exc.problems:
                        field = PROBLEM_FIELD.get(problem.path, ORIGIN_FIELD[form.cleaned_data["origin"]])
                        form.add_error(field, str(problem) if problem.line else problem.message)
                except CsvFileError as exc:
                    form.add_error("csv_file", str(exc))
                else:
                    self.message_user(request, ngettext("List %(name)s made with %(n)d member.",
                                                        "List %(name)s made with %(n)d members.", made.member_count)
                                      % {"name": made.name, "n": made.member_count}, messages.SUCCESS)
                    return redirect(reverse("admin:segments_listsegment_change", args=[made.pk]))
        else:
            initial = {key: request.GET[key] for key in ("store", "origin", "expression", "name") if key in request.GET}
            if "source" in request.GET:
                initial["source"] = request.GET["source"]
            if "store" not in initial:
                first = writable_stores(request).order_by("pk").first()
                initial["store"] = first.pk if first else None
            form = ListMakeForm(initial=initial, stores=writable_stores(request))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Make a list"),
            "form": form,
            "media": self.media + form.media,
            "max_mb": settings.LIST_CSV_MAX_UPLOAD_BYTES / 1e6,
        }
        return TemplateResponse(request, "admin/segments/list_make.html", context)

    def preview_view(self, request: HttpRequest):
        """POST the make-a-list form (without the file) → the members it would have, or the problems."""
        if request.method != "POST":
            return JsonResponse({"error": "POST the form"}, status=405)
        store = admin_stores(request).filter(pk=request.POST.get("store") or 0).first()
        if store is None:
            return JsonResponse({"ok": False, "problems": [{"message": gettext("Choose a store first.")}]})
        origin = request.POST.get("origin")
        try:
            if origin == ListOrigin.QUERY:
                tree = rule_from_input(store=store, query=request.POST.get("query", ""))
                as_of = parse_date(request.POST.get("as_of", "") or "") if request.POST.get("as_of") else None
                preview = segment_preview(store=store, tree=tree, as_of=as_of, sample_size=0)
                count, text = preview.count, preview.query
            elif origin == ListOrigin.SNAPSHOT:
                source = Segment.objects.filter(store=store, pk=request.POST.get("source") or 0).first()
                if source is None:
                    return JsonResponse({"ok": False, "problems": [
                        {"message": gettext("Choose the segment to take a snapshot of.")}]})
                count, text = source.member_count, source.slug
            elif origin == ListOrigin.EXPRESSION:
                text = request.POST.get("expression", "").strip()
                if not text:
                    slugs = {key: list(Segment.objects.filter(store=store, pk__in=request.POST.getlist(key))
                                       .order_by("slug").values_list("slug", flat=True))
                             for key in ("any_of", "all_of", "minus")}
                    text = builder_expression(slugs["any_of"], slugs["all_of"], slugs["minus"])
                tree, members = expression_members(store=store, expression=text)
                count, text = members.count(), set_expressions.to_text(tree)
            else:
                return JsonResponse({"ok": True, "count": None})
        except rules.InvalidRule as exc:
            return JsonResponse({"ok": False, "problems": [p.as_dict() for p in exc.problems]})
        except ValueError as exc:  # a date that is not one
            return JsonResponse({"ok": False, "problems": [{"message": str(exc)}]})
        held = 0
        try:
            share = holdout_share(request.POST.get("holdout_percent") or None)
            held = holdout_size(count, share) if share else 0
        except rules.InvalidRule:
            pass  # the form reports it on submit
        return JsonResponse({"ok": True, "count": count, "held_out": held, "definition": text})

    def match_report_view(self, request: HttpRequest, pk: int):
        segment = scoped_object_or_404(request, Segment.objects.all(), pk=pk, kind=SegmentKind.LIST)
        upload = get_object_or_404(ListUpload, segment=segment)
        response = HttpResponse(exports.match_report_csv(upload).encode("utf-8-sig"),
                                content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{segment.slug}-match-report.csv"'
        return response

