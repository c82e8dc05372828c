"""Admin for Shopify connections, sync jobs (with a live progress bar), the tag ledger and webhooks."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ecpower.admin_access import OWNER_ONLY, StoreScopedAdmin, StoreScopedInline, writable_stores
from integrations.http import PartnerError
from integrations.jobs import import_start
from integrations.models import (
    AppliedTag,
    ChannelTalkConnection,
    OutboundEvent,
    ShopifyConnection,
    SyncJob,
    SyncJobStatus,
    TagMapping,
    TagOperation,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookMessage,
)


class ShopifyConnectionForm(forms.ModelForm):
    access_token = forms.CharField(
        label=_("Admin API access token"), required=False, widget=forms.PasswordInput(render_value=False),
        help_text=_("From the custom app's API credentials (shpat_…). Stored encrypted; leave empty to keep."),
    )
    api_secret = forms.CharField(
        label=_("API secret key"), required=False, widget=forms.PasswordInput(render_value=False),
        help_text=_("Signs the custom app's webhooks. Stored encrypted; leave empty to keep."),
    )

    class Meta:
        model = ShopifyConnection
        fields = ("store", "access_token", "api_secret", "api_version")

    def clean(self):
        cleaned = super().clean()
        token = cleaned.get("access_token")
        store = cleaned.get("store") or getattr(self.instance, "store", None)
        if not token and not (self.instance.pk and self.instance.access_token):
            self.add_error("access_token", _("An access token is needed to connect."))
        if token and store:
            from integrations.shopify.client import ShopifyClient

            try:
                ShopifyClient(store.shopify_domain, token, api_version=cleaned.get("api_version") or None,
                              max_retries=1).shop_info()
            except PartnerError as exc:
                self.add_error("access_token", _("Shopify refused this token: %(error)s") % {"error": exc})
        return cleaned


@admin.register(ShopifyConnection)
class ShopifyConnectionAdmin(StoreScopedAdmin):
    write_roles = OWNER_ONLY
    form = ShopifyConnectionForm
    list_display = ("store", "method", "connected", "api_version", "answered_version", "imported_until")
    list_select_related = ("store",)
    readonly_fields = ("method", "scopes", "answered_version", "connected_at", "disconnected_at", "imported_until")
    actions = ("import_changes", "import_everything")

    def get_fields(self, request, obj=None):
        return (*self.form.Meta.fields, *self.readonly_fields)

    @admin.display(description=_("connected"), boolean=True)
    def connected(self, obj: ShopifyConnection) -> bool:
        return obj.is_connected

    def save_model(self, request, obj, form, change):
        from django.utils import timezone

        token = form.cleaned_data.get("access_token")
        secret = form.cleaned_data.get("api_secret")
        stored = ShopifyConnection.objects.get(pk=obj.pk) if change else None
        if token:
            obj.access_token = token
            obj.connected_at = timezone.now()
            obj.disconnected_at = None
        elif stored:  # an empty password field keeps what is stored
            obj.access_token = stored.access_token
        obj.api_secret = secret or (stored.api_secret if stored else "")
        super().save_model(request, obj, form, change)

    def _start(self, request, queryset, full: bool):
        for link in queryset.filter(store__in=writable_stores(request)).select_related("store"):
            try:
                job = import_start(store=link.store, full=full, user=request.user)
            except PartnerError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                continue
            url = reverse("admin:integrations_syncjob_change", args=[job.pk])
            self.message_user(request, format_html(_('Import queued: <a href="{}">follow its progress</a>.'), url))

    @admin.action(description=_("Import changes from Shopify"), permissions=["change"])
    def import_changes(self, request, queryset):
        self._start(request, queryset, full=False)

    @admin.action(description=_("Import everything from Shopify (bulk)"), permissions=["change"])
    def import_everything(self, request, queryset):
        self._start(request, queryset, full=True)


@admin.register(SyncJob)
class SyncJobAdmin(StoreScopedAdmin):
    list_display = ("created_at", "store", "kind", "segment", "dry_run", "status", "progress_bar", "created_by")
    list_filter = ("store", "kind", "status", "dry_run")
    list_select_related = ("store", "segment", "created_by")
    change_form_template = "admin/sync_job_change.html"
    # Status and counts are shown (and kept live) by the progress panel of the change page.
    readonly_fields = ("store", "kind", "segment", "dry_run", "summary_view", "error", "created_by", "created_at",
                       "started_at", "heartbeat_at", "finished_at", "notified_at")
    fields = readonly_fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_urls(self):
        return [path("<int:pk>/progress/", self.admin_site.admin_view(self.progress_view),
                     name="integrations_syncjob_progress"), *super().get_urls()]

    def progress_view(self, request, pk: int):
        job = get_object_or_404(self.get_queryset(request), pk=pk)
        return JsonResponse({"status": job.status, "status_label": str(job.get_status_display()), "stage": job.stage,
                             "done": job.done, "failed": job.failed, "total": job.total, "percent": job.percent,
                             "finished": job.is_finished})

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, object_id)
        extra = {"progress_url": reverse("admin:integrations_syncjob_progress", args=[object_id])}
        if job is not None:
            extra["failures"] = job.tag_operations.filter(status="failed").select_related("customer")[:50]
            extra["plan"] = (job.summary or {}).get("plan")
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    @admin.display(description=_("summary"))
    def summary_view(self, obj: SyncJob) -> str:
        """The summary as readable JSON; the planned changes' samples are shown in their own table."""
        import json

        summary = dict(obj.summary or {})
        if isinstance(summary.get("plan"), dict):
            summary["plan"] = {k: v for k, v in summary["plan"].items() if k != "samples"}
        return format_html('<pre style="margin:0">{}</pre>', json.dumps(summary, ensure_ascii=False, indent=2))

    @admin.display(description=_("progress"))
    def progress_bar(self, obj: SyncJob) -> str:
        label = (f"{obj.stage} {obj.done + obj.failed}/{obj.total}" if obj.status == SyncJobStatus.RUNNING
                 else obj.get_status_display())
        return format_html('<progress max="100" value="{}"></progress> {}', obj.percent, label)


class ReadOnlyAdmin(StoreScopedAdmin):
    def has_add_permission(self, request, *args):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(TagOperation)
class TagOperationAdmin(ReadOnlyAdmin):
    list_display = ("job", "customer", "tag", "action", "status", "attempts", "error", "updated_at")
    list_filter = ("status", "action", "tag")
    search_fields = ("=shopify_customer_id", "customer__email")
    raw_id_fields = ("customer", "job")
    list_select_related = ("customer", "job")
    show_full_result_count = False  # a sync job has one row per customer and tag


@admin.register(AppliedTag)
class AppliedTagAdmin(ReadOnlyAdmin):
    list_display = ("customer", "tag", "store", "applied_at")
    list_filter = ("store", "tag")
    search_fields = ("customer__email",)
    list_select_related = ("customer", "store")
    raw_id_fields = ("customer",)
    show_full_result_count = False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "shop_domain", "topic", "status", "result")
    list_filter = ("topic", "status")
    search_fields = ("event_id", "shop_domain")


class WebhookEndpointForm(forms.ModelForm):
    events = forms.MultipleChoiceField(label=_("events"), choices=OutboundEvent.choices,
                                       widget=forms.CheckboxSelectMultiple)
    url = forms.URLField(label=_("URL"), max_length=2000, assume_scheme="https",
                         help_text=_("HTTPS; http only for 127.0.0.1 or localhost."))

    class Meta:
        model = WebhookEndpoint
        fields = ("store", "name", "url", "events")

    def clean_url(self):
        from django.core.exceptions import ValidationError

        from integrations.outbound import check_url

        url = self.cleaned_data["url"]
        try:
            check_url(url)
        except ValidationError as exc:
            raise forms.ValidationError(exc.message_dict["url"]) from exc
        return url


class WebhookAttemptInline(StoreScopedInline, admin.TabularInline):
    model = WebhookAttempt
    fields = ("attempted_at", "status_code", "duration_ms", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False  # attempts are written by the sender only


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(StoreScopedAdmin):
    """Partner endpoints; the signing secret is shown once, in the message after adding."""

    form = WebhookEndpointForm
    write_roles = OWNER_ONLY
    list_display = ("name", "store", "url", "event_list", "state", "consecutive_failures", "created_at")
    list_filter = ("store",)
    search_fields = ("name", "url")
    list_select_related = ("store",)
    readonly_fields = ("paused_at", "pause_reason", "consecutive_failures", "created_at")
    actions = ("resume_selected",)

    def get_fields(self, request, obj=None):
        return ("store", "name", "url", "events") + (self.readonly_fields if obj else ())

    @admin.display(description=_("events"))
    def event_list(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.events)

    @admin.display(description=_("state"))
    def state(self, obj: WebhookEndpoint) -> str:
        return _("Paused") if obj.is_paused else _("Active")

    def save_model(self, request, obj, form, change):
        from integrations.outbound import webhook_endpoint_create

        if change:
            return super().save_model(request, obj, form, change)
        data = form.cleaned_data
        endpoint, secret = webhook_endpoint_create(store=data["store"], name=data["name"], url=data["url"],
                                                   events=list(data["events"]))
        obj.pk, obj.id = endpoint.pk, endpoint.pk
        self.message_user(request, _("Copy the signing secret now; it is not shown again: %(secret)s")
                          % {"secret": secret}, messages.WARNING)

    @admin.action(description=_("Resume selected endpoints"), permissions=["change"])
    def resume_selected(self, request, queryset):
        from integrations.outbound import webhook_endpoint_resume

        for endpoint in queryset.filter(store__in=writable_stores(request, OWNER_ONLY)):
            webhook_endpoint_resume(endpoint=endpoint)
        self.message_user(request, _("Resumed; waiting messages are sent within a minute."))


@admin.register(WebhookMessage)
class WebhookMessageAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "event", "endpoint", "status", "attempts", "next_attempt_at", "last_error")
    list_filter = ("status", "event", "endpoint__store")
    list_select_related = ("endpoint",)
    readonly_fields = ("endpoint", "event", "delivery_id", "status", "attempts", "next_attempt_at", "delivered_at",
                       "last_error", "payload")
    inlines = (WebhookAttemptInline,)


@admin.register(TagMapping)
class TagMappingAdmin(StoreScopedAdmin):
    """Partner tags read as customer attributes; the form previews a mapping against current tags."""

    list_display = ("attribute", "kind", "pattern", "store", "created_at")
    list_filter = ("store", "attribute")
    list_select_related = ("store",)
    fields = ("store", "attribute", "kind", "pattern")
    change_form_template = "admin/integrations/tagmapping_change_form.html"

    def get_urls(self):
        extra = [path("preview/", self.admin_site.admin_view(self.preview_view), name="integrations_tagmapping_preview")]
        return extra + super().get_urls()

    def preview_view(self, request):
        from django.core.exceptions import ValidationError

        from ecpower.admin_access import admin_stores
        from integrations.aitrillion.mappings import mapping_preview

        if request.method != "POST":
            return JsonResponse({"ok": False, "errors": ["POST store, kind and pattern"]}, status=405)
        store = admin_stores(request).filter(pk=request.POST.get("store") or 0).first()
        if store is None:
            return JsonResponse({"ok": False, "errors": [str(_("Choose a store first."))]})
        try:
            preview = mapping_preview(store=store, kind=request.POST.get("kind", ""),
                                      pattern=request.POST.get("pattern", ""))
        except ValidationError as exc:
            return JsonResponse({"ok": False, "errors": [m for ms in exc.message_dict.values() for m in ms]})
        summary = _("%(with)d of %(all)d customers have a value.") % {"with": preview.customers_with_value,
                                                                       "all": preview.customers}
        return JsonResponse({"ok": True, "summary": summary, "values": [
            {"value": value, "customers": n, "examples": examples} for value, n, examples in preview.values]})

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)

        class CheckedForm(form):
            def clean(self):
                from django.core.exceptions import ValidationError

                from integrations.aitrillion.mappings import compile_pattern

                cleaned = super().clean()
                if cleaned.get("kind") and cleaned.get("pattern"):
                    try:
                        compile_pattern(cleaned["kind"], cleaned["pattern"])
                    except ValidationError as exc:
                        self.add_error("pattern", exc.message_dict["pattern"])
                return cleaned

        return CheckedForm


class ChannelTalkConnectionForm(forms.ModelForm):
    access_key = forms.CharField(label=_("access key"), required=False,
                                 widget=forms.PasswordInput(render_value=False),
                                 help_text=_("Desk › Settings › API key management. Stored encrypted; leave empty to "
                                             "keep."))
    access_secret = forms.CharField(label=_("access secret"), required=False,
                                    widget=forms.PasswordInput(render_value=False),
                                    help_text=_("Stored encrypted; leave empty to keep."))
    base_url = forms.URLField(label=_("API address"), assume_scheme="https", initial="https://api.channel.io",
                              help_text=_("The local emulator for the demo and tests."))

    class Meta:
        model = ChannelTalkConnection
        fields = ("store", "access_key", "access_secret", "base_url", "member_id_source", "profile_field",
                  "segments", "active")

    def clean(self):
        cleaned = super().clean()
        for name in ("access_key", "access_secret"):
            if not cleaned.get(name) and not getattr(self.instance, name, ""):
                self.add_error(name, _("Needed to connect."))
        store = cleaned.get("store") or getattr(self.instance, "store", None)
        if store and any(s.store_id != store.pk for s in cleaned.get("segments") or []):
            self.add_error("segments", _("Choose segments of the store %(store)s.") % {"store": store})
        return cleaned


@admin.register(ChannelTalkConnection)
class ChannelTalkConnectionAdmin(StoreScopedAdmin):
    form = ChannelTalkConnectionForm
    write_roles = OWNER_ONLY
    list_display = ("store", "active", "member_id_source", "profile_field", "created_at")
    list_select_related = ("store",)
    filter_horizontal = ("segments",)
    actions = ("push_now",)

    def save_model(self, request, obj, form, change):
        stored = ChannelTalkConnection.objects.get(pk=obj.pk) if change else None
        for name in ("access_key", "access_secret"):
            setattr(obj, name, form.cleaned_data.get(name) or (getattr(stored, name) if stored else ""))
        super().save_model(request, obj, form, change)

    @admin.action(description=_("Push segments to Channel Talk now"), permissions=["change"])
    def push_now(self, request, queryset):
        from integrations.channeltalk.push import channeltalk_push_start

        for connection in queryset.filter(store__in=writable_stores(request), active=True).select_related("store"):
            job = channeltalk_push_start(store=connection.store, user=request.user)
            url = reverse("admin:integrations_syncjob_change", args=[job.pk])
            self.message_user(request, format_html(_('{}: push queued, <a href="{}">follow its progress</a>.'),
                                                   connection.store, url))
