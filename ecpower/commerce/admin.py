from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from ecpower.admin_access import OWNER_ONLY, StoreScopedAdmin, StoreScopedInline, admin_stores, writable_stores
from ecpower.admin_deletion import CountedDeletionAdmin
from ecpower.commerce.access import api_key_create, api_key_revoke
from ecpower.commerce.models import (
    ApiKey,
    CsvImport,
    CsvImportStatus,
    Customer,
    CustomerTag,
    LineItem,
    Order,
    Product,
    ProductTag,
    ProductVariant,
    Store,
    StoreMembership,
)
from ecpower.commerce.selectors import customer_places
from ecpower.commerce.services import store_deletion_request, store_deletion_steps
from ecpower.commerce.tasks import csv_import_enqueue


@admin.register(Store)
class StoreAdmin(CountedDeletionAdmin, StoreScopedAdmin):
    store_lookup = "pk"
    write_roles = OWNER_ONLY
    deletion_owner_field = "store"  # the delete page counts each table's rows of the store
    # ... but these, tens of millions of rows at a million customers, are named without a count.
    deletion_uncounted = (
        "commerce.LineItem", "commerce.CustomerTag", "commerce.CustomerTagEvent", "segments.Membership",
        "segments.MembershipEvent", "segments.CustomerDigest", "metrics.SnapshotMember", "integrations.TagOperation",
        "integrations.AppliedTag", "integrations.ChannelTalkUser", "integrations.WebhookDelivery",
        "integrations.WebhookMessage", "integrations.WebhookAttempt",
    )

    def has_add_permission(self, request, *args):
        return request.user.is_superuser  # a store is added once, by the operator

    list_display = ("name", "shopify_domain", "time_zone", "currency", "tag_prefix", "created_at", "deletion")
    search_fields = ("name", "shopify_domain")
    fieldsets = (
        (None, {"fields": ("name", "shopify_domain", "time_zone", "currency")}),
        (_("Segments and tags"), {"fields": ("tag_prefix", "notification_email", "daily_run_hour")}),
    )

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # a store is deleted from its own page, in the background
        return actions

    @admin.display(description=_("deletion"))
    def deletion(self, store: Store) -> str:
        if not store.being_deleted:
            return ""
        return gettext("Being deleted: step %(done)d of %(steps)d") % {
            "done": store.deletion_step, "steps": store_deletion_steps()}

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.being_deleted:
            # Asked again, a deletion is queued again: one stopped by an error starts over and finishes.
            return self._member(request) and writable_stores(request, self.write_roles, deleting=True).filter(
                pk=obj.pk).exists()
        return super().has_delete_permission(request, obj)

    def delete_model(self, request, obj):
        # A store of a million customers takes minutes to delete (docs/performance.md): a background job.
        store_deletion_request(store=obj)

    def response_delete(self, request, obj_display, obj_id):
        self.message_user(request, gettext(
            "The store “%(store)s” is being deleted in the background. It is left out of the daily runs, the API "
            "and incoming webhooks from now on, and disappears from this list when its data is gone.")
            % {"store": obj_display}, messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:commerce_store_changelist"))


class CustomerTagInline(StoreScopedInline, admin.TabularInline):
    model = CustomerTag
    fields = ("name",)
    extra = 0


class CustomerOrderInline(StoreScopedInline, admin.TabularInline):
    model = Order
    fields = ("name", "created_at", "ordinal", "total", "refunded_amount", "financial_status", "cancelled_at", "discount_code", "source_name")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ("-created_at",)

    def has_add_permission(self, request, obj=None):
        return False


class PlaceListFilter(admin.AllValuesFieldListFilter):
    """The customer list's country or province filter, its choices from ``customer_places``: the places of the
    stores the user sees (of the one chosen in the store filter), a province filter's of the chosen country."""

    def __init__(self, field, request, params, model, model_admin, field_path):
        super().__init__(field, request, params, model, model_admin, field_path)
        places = self.places(request)
        if field.name == "country_code":
            self.lookup_choices = sorted({country for country, _province in places})
        else:
            country = request.GET.get("country_code")
            self.lookup_choices = sorted({province for place_country, province in places
                                          if country is None or place_country == country})

    @staticmethod
    def places(request) -> list[tuple[str, str]]:
        """The places of the request's stores, read once for both filters."""
        if not hasattr(request, "_customer_places"):
            stores = admin_stores(request)
            chosen = request.GET.get("store__id__exact", "")
            if chosen.isdigit():
                stores = stores.filter(pk=chosen)
            request._customer_places = customer_places(list(stores.values_list("pk", flat=True)))
        return request._customer_places


@admin.register(Customer)
class CustomerAdmin(CountedDeletionAdmin, StoreScopedAdmin):
    list_display = ("display_name", "email", "province_code", "orders_count", "amount_spent", "last_order_at", "email_marketing", "store")
    list_filter = ("store", "email_marketing", "sms_marketing", ("country_code", PlaceListFilter),
                   ("province_code", PlaceListFilter))
    search_fields = ("email", "first_name", "last_name", "phone", "=shopify_id")
    list_select_related = ("store",)
    show_full_result_count = False  # counting a million customers on every page is not worth it
    readonly_fields = (*Customer.FACT_FIELDS, "shopify_created_at", "shopify_updated_at", "created_at")
    inlines = (CustomerTagInline, CustomerOrderInline)
    fieldsets = (
        (None, {"fields": ("store", "shopify_id", ("last_name", "first_name"), "email", "phone", "state", "note")}),
        (_("Marketing consent"), {"fields": ("email_marketing", "sms_marketing")}),
        (_("Address"), {"fields": ("country_code", "province_code", "city", "zip")}),
        (_("Facts from orders"), {"fields": Customer.FACT_FIELDS}),
        (_("Times"), {"fields": ("shopify_created_at", "shopify_updated_at", "created_at")}),
    )

    @admin.display(description=_("name"), ordering="last_name")
    def display_name(self, obj: Customer) -> str:
        return str(obj)


class LineItemInline(StoreScopedInline, admin.TabularInline):
    model = LineItem
    fields = ("position", "title", "sku", "product", "product_type", "vendor", "quantity", "unit_price", "discount")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Order)
class OrderAdmin(StoreScopedAdmin):
    list_display = ("name", "customer", "created_at", "ordinal", "total", "refunded_amount", "financial_status", "cancelled_at", "source_name", "store")
    # Filters whose choices cost nothing: a source or campaign filter lists the distinct values of every
    # order and a date hierarchy the distinct months (at 100,000 customers 0.3–0.4 s each per page,
    # seconds at a million), so those are searched for instead.
    list_filter = ("store", "financial_status", "test", "created_at")
    search_fields = ("name", "email", "discount_code", "=shopify_id", "=source_name", "=utm_campaign")
    list_select_related = ("customer", "store")
    raw_id_fields = ("customer",)
    show_full_result_count = False
    readonly_fields = ("ordinal",)
    inlines = (LineItemInline,)


class ProductVariantInline(StoreScopedInline, admin.TabularInline):
    model = ProductVariant
    fields = ("position", "sku", "title", "price")
    extra = 0


class ProductTagInline(StoreScopedInline, admin.TabularInline):
    model = ProductTag
    fields = ("name",)
    extra = 0


@admin.register(Product)
class ProductAdmin(StoreScopedAdmin):
    list_display = ("title", "handle", "product_type", "vendor", "variant_count", "store")
    list_filter = ("store", "product_type", "vendor")
    search_fields = ("title", "handle", "variants__sku")
    list_select_related = ("store",)
    inlines = (ProductVariantInline, ProductTagInline)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(variant_total=Count("variants"))

    @admin.display(description=_("variants"), ordering="variant_total")
    def variant_count(self, obj: Product) -> int:
        return obj.variant_total


class CsvImportForm(forms.ModelForm):
    class Meta:
        model = CsvImport
        fields = ("store", "customers_file", "products_file", "orders_file")

    def clean(self):
        cleaned = super().clean()
        files = [cleaned.get(name) for name in ("customers_file", "products_file", "orders_file")]
        if not any(files):
            raise forms.ValidationError(_("Choose at least one file."))
        limit = settings.CSV_MAX_UPLOAD_BYTES
        for name in ("customers_file", "products_file", "orders_file"):
            upload = cleaned.get(name)
            if upload and upload.size > limit:
                self.add_error(
                    name,
                    _("%(name)s is %(size)s MB; the limit is %(limit)s MB (ECPOWER_CSV_MAX_UPLOAD_BYTES).")
                    % {"name": upload.name, "size": round(upload.size / 1e6, 1), "limit": round(limit / 1e6, 1)},
                )
        return cleaned


@admin.register(CsvImport)
class CsvImportAdmin(StoreScopedAdmin):
    form = CsvImportForm
    list_display = ("created_at", "store", "status", "progress_bar", "created_by")
    list_filter = ("store", "status")
    list_select_related = ("store", "created_by")
    fields = ("store", "customers_file", "products_file", "orders_file")
    readonly_fields = ("status", "progress_bar", "summary", "error", "created_by", "started_at", "finished_at")

    def get_fields(self, request, obj=None):
        if obj is None:
            return self.fields
        return ("store", "status", "progress_bar", "summary", "error", "created_by", "started_at", "finished_at")

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is None else ("store", *self.readonly_fields)

    def has_change_permission(self, request, obj=None):
        return obj is None or super().has_change_permission(request, obj)

    @admin.display(description=_("progress"))
    def progress_bar(self, obj: CsvImport) -> str:
        label = f"{obj.stage} {obj.progress_done}/{obj.progress_total}" if obj.status == CsvImportStatus.RUNNING else obj.get_status_display()
        return format_html('<progress max="100" value="{}"></progress> {}', obj.percent, label)

    def save_model(self, request, obj: CsvImport, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
        if not change:
            csv_import_enqueue(obj)
            messages.info(request, _("The import is queued; this page shows its progress."))


@admin.register(StoreMembership)
class StoreMembershipAdmin(StoreScopedAdmin):
    write_roles = OWNER_ONLY
    list_display = ("user", "store", "role")
    list_filter = ("store", "role")
    search_fields = ("user__username", "user__email")
    list_select_related = ("user", "store")


class ApiKeyForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ("store", "name", "scope")


@admin.register(ApiKey)
class ApiKeyAdmin(StoreScopedAdmin):
    """Keys are made here and shown once, in the message after saving; only a hash is kept."""

    form = ApiKeyForm
    write_roles = OWNER_ONLY
    list_display = ("name", "store", "scope", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("store", "scope")
    search_fields = ("name", "prefix")
    list_select_related = ("store",)
    actions = ("revoke_selected",)

    def get_readonly_fields(self, request, obj=None):
        return ("store", "scope", "prefix", "created_by", "created_at", "last_used_at", "revoked_at") if obj else ()

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("store", "name", "scope")
        return ("store", "name", "scope", "prefix", "created_by", "created_at", "last_used_at", "revoked_at")

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        key, raw = api_key_create(store=form.cleaned_data["store"], name=form.cleaned_data["name"],
                                  scope=form.cleaned_data["scope"], user=request.user)
        obj.pk, obj.id = key.pk, key.pk
        self.message_user(request, gettext("Copy this key now; it is not shown again: %(key)s") % {"key": raw},
                          messages.WARNING)

    @admin.action(description=_("Revoke selected keys"), permissions=["change"])
    def revoke_selected(self, request, queryset):
        queryset = queryset.filter(store__in=writable_stores(request, OWNER_ONLY))
        for key in queryset:
            api_key_revoke(key=key)
        self.message_user(request, gettext("%(n)d keys revoked.") % {"n": queryset.count()})
