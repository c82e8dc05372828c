"""The store's data: what Shopify knows about customers, products and orders, plus the facts
we derive from orders (see docs/data-model.md for the rules).

Every row carries ``store``; every query is scoped by it. Models hold fields, constraints and
small properties only: writes go through ``services``, reads through ``selectors``.
"""

from __future__ import annotations

import json
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Lower, Upper
from django.utils.translation import gettext_lazy as _

MONEY = {"max_digits": 14, "decimal_places": 2}


class ProductIdsField(models.Field):
    """A sorted list of product ids: ``bigint[]`` on PostgreSQL (read with its array operators), a JSON list
    in text elsewhere (kept the same way, never read in SQL)."""

    description = _("product ids")

    def db_type(self, connection) -> str:
        return "bigint[]" if connection.vendor == "postgresql" else "text"

    def get_db_prep_value(self, value, connection, prepared=False):
        if value is None:
            return None
        ids = sorted({int(pk) for pk in value})
        return ids if connection.vendor == "postgresql" else json.dumps(ids)

    def from_db_value(self, value, expression, connection):
        return self.to_python(value)

    def to_python(self, value):
        if value is None:
            return None
        if isinstance(value, str):
            value = json.loads(value)
        return sorted({int(pk) for pk in value})


def validate_time_zone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(_("%(value)s is not a known time zone."), params={"value": value})


def default_time_zone() -> str:
    return settings.TIME_ZONE


class StoreQuerySet(models.QuerySet):
    def live(self) -> StoreQuerySet:
        """Stores not being deleted: the ones the daily runs, partners' webhooks and the API work on."""
        return self.filter(deletion_requested_at__isnull=True)

    def being_deleted(self) -> StoreQuerySet:
        return self.filter(deletion_requested_at__isnull=False)


class Store(models.Model):
    name = models.CharField(_("name"), max_length=200)
    shopify_domain = models.CharField(
        _("Shopify domain"), max_length=255, unique=True, help_text=_("e.g. my-shop.myshopify.com")
    )
    time_zone = models.CharField(
        _("time zone"), max_length=64, default=default_time_zone, validators=[validate_time_zone]
    )
    currency = models.CharField(_("currency"), max_length=3, default="JPY")
    tag_prefix = models.CharField(
        _("tag prefix"),
        max_length=20,
        default="ecp-",
        help_text=_("Prefix of the Shopify customer tags this product writes."),
    )
    notification_email = models.EmailField(
        _("notification email"), blank=True, help_text=_("Receives a summary when an import or sync finishes.")
    )
    daily_run_hour = models.PositiveSmallIntegerField(
        _("daily run hour"), default=3, validators=[MinValueValidator(0), MaxValueValidator(23)],
        help_text=_("Local hour (0–23, in the store's time zone) of the daily import, recompute, snapshots and "
                    "tag sync."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    # A store's deletion runs in the background (``store_deletion_request``): from the request on, the store is
    # left out of the daily runs, the API and incoming webhooks, and no longer changed in the admin.
    deletion_requested_at = models.DateTimeField(_("deletion requested at"), null=True, blank=True, editable=False)
    deletion_step = models.PositiveSmallIntegerField(_("deletion steps done"), default=0, editable=False)

    objects = StoreQuerySet.as_manager()

    class Meta:
        verbose_name = _("store")
        verbose_name_plural = _("stores")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name or self.shopify_domain

    @property
    def being_deleted(self) -> bool:
        return self.deletion_requested_at is not None

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)


class MarketingState(models.TextChoices):
    SUBSCRIBED = "SUBSCRIBED", _("Subscribed")
    NOT_SUBSCRIBED = "NOT_SUBSCRIBED", _("Not subscribed")
    UNSUBSCRIBED = "UNSUBSCRIBED", _("Unsubscribed")
    PENDING = "PENDING", _("Pending")
    REDACTED = "REDACTED", _("Redacted")
    INVALID = "INVALID", _("Invalid")


class CustomerState(models.TextChoices):
    ENABLED = "ENABLED", _("Enabled")
    DISABLED = "DISABLED", _("Disabled")
    INVITED = "INVITED", _("Invited")
    DECLINED = "DECLINED", _("Declined")


class Customer(models.Model):
    # The store's customers are found by customer_store_recent (store, -id): a separate index of the
    # foreign key would only be written to.
    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="customers", verbose_name=_("store"),
                              db_index=False)
    shopify_id = models.BigIntegerField(_("Shopify ID"), null=True, blank=True)
    email = models.CharField(_("email"), max_length=254, blank=True)
    phone = models.CharField(_("phone"), max_length=40, blank=True)
    first_name = models.CharField(_("first name"), max_length=255, blank=True)
    last_name = models.CharField(_("last name"), max_length=255, blank=True)
    email_marketing = models.CharField(
        _("email marketing"), max_length=20, choices=MarketingState.choices, default=MarketingState.NOT_SUBSCRIBED
    )
    sms_marketing = models.CharField(
        _("SMS marketing"), max_length=20, choices=MarketingState.choices, default=MarketingState.NOT_SUBSCRIBED
    )
    country_code = models.CharField(_("country"), max_length=2, blank=True)
    province_code = models.CharField(_("province code"), max_length=10, blank=True, help_text=_("e.g. JP-13"))
    city = models.CharField(_("city"), max_length=255, blank=True)
    zip = models.CharField(_("postal code"), max_length=20, blank=True)
    state = models.CharField(_("account state"), max_length=10, choices=CustomerState.choices, blank=True)
    note = models.TextField(_("note"), blank=True)
    shopify_created_at = models.DateTimeField(_("created in Shopify"), null=True, blank=True)
    shopify_updated_at = models.DateTimeField(_("updated in Shopify"), null=True, blank=True)

    # Facts derived from counted orders by services.customer_facts_refresh (docs/data-model.md). No index
    # reads them and the table's pages keep a tenth free (migration 0011, PostgreSQL), so a refresh updates
    # the row in place without writing index entries.
    orders_count = models.PositiveIntegerField(_("number of orders"), default=0)
    amount_spent = models.DecimalField(_("amount spent"), default=0, **MONEY)
    average_order_value = models.DecimalField(_("average order value"), null=True, blank=True, **MONEY)
    first_order_at = models.DateTimeField(_("first order"), null=True, blank=True)
    last_order_at = models.DateTimeField(_("last order"), null=True, blank=True)
    first_order_discount_code = models.CharField(_("first order discount code"), max_length=255, blank=True)
    first_order_source = models.CharField(_("first order source"), max_length=255, blank=True)
    first_order_utm_source = models.CharField(_("first order UTM source"), max_length=255, blank=True)
    first_order_utm_medium = models.CharField(_("first order UTM medium"), max_length=255, blank=True)
    first_order_utm_campaign = models.CharField(_("first order UTM campaign"), max_length=255, blank=True)
    # When an ingest last refreshed this customer's facts (orders arrived or changed). The next day's
    # snapshots evaluate such customers again even if no fact moved (an edited line item, say).
    facts_refreshed_at = models.DateTimeField(_("facts refreshed"), null=True, blank=True, editable=False)

    created_at = models.DateTimeField(_("added"), auto_now_add=True)

    FACT_FIELDS = (
        "orders_count",
        "amount_spent",
        "average_order_value",
        "first_order_at",
        "last_order_at",
        "first_order_discount_code",
        "first_order_source",
        "first_order_utm_source",
        "first_order_utm_medium",
        "first_order_utm_campaign",
    )

    class Meta:
        verbose_name = _("customer")
        verbose_name_plural = _("customers")
        constraints = [
            models.UniqueConstraint(
                fields=["store", "shopify_id"],
                condition=Q(shopify_id__isnull=False),
                name="customer_unique_shopify_id_per_store",
            ),
            # Emails match case-insensitively (Shopify exports mix the case of one address).
            models.UniqueConstraint(
                "store",
                Lower("email"),
                condition=~Q(email=""),
                name="customer_unique_email_per_store",
            ),
        ]
        indexes = [
            # Admin and API list customers of one store, newest first.
            models.Index(fields=["store", "-id"], name="customer_store_recent"),
            # The customer list's country and province filters: their choices, walked pair by pair
            # (commerce.selectors.customer_places), and the customers of one place.
            models.Index(fields=["store", "country_code", "province_code"], name="customer_store_place"),
        ]

    def __str__(self) -> str:
        name = f"{self.last_name} {self.first_name}".strip()
        return name or self.email or f"#{self.pk}"


class CustomerTag(models.Model):
    """One Shopify customer tag of one customer, as Shopify writes it (trimmed)."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"))
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="tags", verbose_name=_("customer"))
    name = models.CharField(_("tag"), max_length=255)

    class Meta:
        verbose_name = _("customer tag")
        verbose_name_plural = _("customer tags")
        constraints = [models.UniqueConstraint(fields=["customer", "name"], name="customer_tag_unique")]
        indexes = [
            # The popular-tags insight, tag sync and mappings (a tag by its exact name).
            models.Index(fields=["store", "name"], name="customer_tag_store_name"),
            # customer_tags CONTAINS 'x' (``name__iexact``: UPPER(name) = UPPER('x')), and the statistics of
            # that expression: without them the planner put 300,038 of a million customers' tags at 2,062 and
            # probed the customers one by one (2.4 s; a hash join once it knows, 0.92–0.98 s;
            # docs/performance.md).
            models.Index(F("store"), Upper("name"), name="customer_tag_store_upper"),
        ]

    def __str__(self) -> str:
        return self.name


class TagEventAction(models.TextChoices):
    ADDED = "added", _("Added")
    REMOVED = "removed", _("Removed")


class CustomerTagEvent(models.Model):
    """Tag history: a tag seen added to or removed from a customer (by an import, a webhook or our sync).

    Partner tiers (AiTrillion) and as-of evaluation of tag rules read it; it starts on the day the
    store is first imported, so earlier tag changes are unknown.
    """

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"))
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="tag_events",
                                 verbose_name=_("customer"))
    name = models.CharField(_("tag"), max_length=255)
    action = models.CharField(_("action"), max_length=8, choices=TagEventAction.choices)
    occurred_at = models.DateTimeField(_("occurred at"))
    source = models.CharField(_("source"), max_length=20, help_text=_("import, webhook or sync"))

    class Meta:
        verbose_name = _("customer tag event")
        verbose_name_plural = _("customer tag events")
        indexes = [
            # Tag movement over a window: events of one store's tags by time.
            models.Index(fields=["store", "name", "occurred_at"], name="tag_event_store_name_time"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.name}"


class Product(models.Model):
    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="products", verbose_name=_("store"))
    shopify_id = models.BigIntegerField(_("Shopify ID"), null=True, blank=True)
    handle = models.CharField(_("handle"), max_length=255)
    title = models.CharField(_("title"), max_length=255)
    product_type = models.CharField(_("product type"), max_length=255, blank=True)
    vendor = models.CharField(_("vendor"), max_length=255, blank=True)
    category = models.CharField(_("category"), max_length=500, blank=True)
    status = models.CharField(_("status"), max_length=20, blank=True)

    class Meta:
        verbose_name = _("product")
        verbose_name_plural = _("products")
        constraints = [
            models.UniqueConstraint(fields=["store", "handle"], name="product_unique_handle_per_store"),
            models.UniqueConstraint(
                fields=["store", "shopify_id"],
                condition=Q(shopify_id__isnull=False),
                name="product_unique_shopify_id_per_store",
            ),
        ]

    def __str__(self) -> str:
        return self.title


class ProductTag(models.Model):
    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"))
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="tags", verbose_name=_("product"))
    name = models.CharField(_("tag"), max_length=255)

    class Meta:
        verbose_name = _("product tag")
        verbose_name_plural = _("product tags")
        constraints = [models.UniqueConstraint(fields=["product", "name"], name="product_tag_unique")]
        indexes = [
            # products_purchased MATCHES (tag = 'x') looks products up by tag.
            models.Index(fields=["store", "name"], name="product_tag_store_name"),
        ]

    def __str__(self) -> str:
        return self.name


class ProductVariant(models.Model):
    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"))
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="variants", verbose_name=_("product"))
    shopify_id = models.BigIntegerField(_("Shopify ID"), null=True, blank=True)
    sku = models.CharField(_("SKU"), max_length=255, blank=True)
    title = models.CharField(_("title"), max_length=255, blank=True)
    price = models.DecimalField(_("price"), null=True, blank=True, **MONEY)
    position = models.PositiveSmallIntegerField(_("position"), default=1)

    class Meta:
        verbose_name = _("product variant")
        verbose_name_plural = _("product variants")
        ordering = ["product", "position"]
        indexes = [
            # Line items are matched to products by SKU on import.
            models.Index(fields=["store", "sku"], name="variant_store_sku"),
        ]

    def __str__(self) -> str:
        return self.sku or self.title or f"#{self.pk}"


class FinancialStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    AUTHORIZED = "authorized", _("Authorized")
    PARTIALLY_PAID = "partially_paid", _("Partially paid")
    PAID = "paid", _("Paid")
    PARTIALLY_REFUNDED = "partially_refunded", _("Partially refunded")
    REFUNDED = "refunded", _("Refunded")
    VOIDED = "voided", _("Voided")
    EXPIRED = "expired", _("Expired")


class OrderQuerySet(models.QuerySet):
    def counted(self) -> OrderQuerySet:
        """Orders that count towards customer facts: not cancelled and not test orders."""
        return self.filter(cancelled_at__isnull=True, test=False)


class Order(models.Model):
    # Both foreign keys are served by the composite indexes below (order_store_created leads with the
    # store, order_customer_cover with the customer). Their own indexes would only be written to: every
    # order's ordinal update rewrites all of an order's index entries (docs/performance.md).
    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="orders", verbose_name=_("store"),
                              db_index=False)
    shopify_id = models.BigIntegerField(_("Shopify ID"), null=True, blank=True)
    name = models.CharField(_("order"), max_length=64, help_text=_("e.g. #1001"))
    customer = models.ForeignKey(
        Customer,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="orders",
        verbose_name=_("customer"),
        help_text=_("Empty for guest orders."),
        db_index=False,
    )
    email = models.CharField(_("email"), max_length=254, blank=True)
    created_at = models.DateTimeField(_("created at"))
    processed_at = models.DateTimeField(_("processed at"), null=True, blank=True)
    shopify_updated_at = models.DateTimeField(_("updated in Shopify"), null=True, blank=True)
    currency = models.CharField(_("currency"), max_length=3, blank=True)
    subtotal = models.DecimalField(_("subtotal"), default=0, **MONEY)
    total_discounts = models.DecimalField(_("discounts"), default=0, **MONEY)
    discount_code = models.CharField(_("discount code"), max_length=255, blank=True)
    shipping = models.DecimalField(_("shipping"), default=0, **MONEY)
    tax = models.DecimalField(_("tax"), default=0, **MONEY)
    total = models.DecimalField(_("total"), default=0, **MONEY)
    refunded_amount = models.DecimalField(_("refunded"), default=0, **MONEY)
    source_name = models.CharField(_("source"), max_length=255, blank=True, help_text=_("web, pos, an app…"))
    landing_site = models.CharField(_("landing page"), max_length=2000, blank=True)
    referring_site = models.CharField(_("referring site"), max_length=2000, blank=True)
    utm_source = models.CharField(_("UTM source"), max_length=255, blank=True)
    utm_medium = models.CharField(_("UTM medium"), max_length=255, blank=True)
    utm_campaign = models.CharField(_("UTM campaign"), max_length=255, blank=True)
    utm_content = models.CharField(_("UTM content"), max_length=255, blank=True)
    utm_term = models.CharField(_("UTM term"), max_length=255, blank=True)
    tags = models.CharField(_("order tags"), max_length=2000, blank=True, help_text=_("Comma separated."))
    financial_status = models.CharField(
        _("financial status"), max_length=20, choices=FinancialStatus.choices, blank=True
    )
    fulfillment_status = models.CharField(_("fulfillment status"), max_length=20, blank=True)
    cancelled_at = models.DateTimeField(_("cancelled at"), null=True, blank=True)
    test = models.BooleanField(_("test order"), default=False)
    ordinal = models.PositiveIntegerField(
        _("order number of the customer"),
        null=True,
        blank=True,
        help_text=_("1 for the customer's first counted order, 2 for the second… Empty when not counted."),
    )
    # The products of the order's lines (those linked to one), so a products_purchased condition on products,
    # dates and order numbers reads one row per order from order_customer_cover instead of every line from
    # line_item_customer_cover (docs/performance.md). NULL while unknown: whatever writes or relinks lines
    # without knowing their products clears it, and customer_facts_refresh fills it from the lines; the
    # conditions read the lines while any counted order of the store has none.
    product_ids = ProductIdsField(_("products"), null=True, blank=True, editable=False)

    objects = OrderQuerySet.as_manager()

    class Meta:
        verbose_name = _("order")
        verbose_name_plural = _("orders")
        constraints = [
            models.UniqueConstraint(fields=["store", "name"], name="order_unique_name_per_store"),
            models.UniqueConstraint(
                fields=["store", "shopify_id"],
                condition=Q(shopify_id__isnull=False),
                name="order_unique_shopify_id_per_store",
            ),
        ]
        indexes = [
            # Facts refresh (ordinal window per customer), "order number k" conditions, and products_purchased
            # on products, dates and order numbers: covering on PostgreSQL, so a whole store's counted orders
            # with their products are read in customer order from the index alone (docs/performance.md).
            models.Index(fields=["customer", "ordinal"], name="order_customer_cover",
                         include=["store", "created_at", "product_ids"]),
            # The orders whose products are not known yet (customer_facts_refresh fills them; conditions
            # read the lines while a counted order of the store is among them): empty in the steady state.
            models.Index(fields=["store", "customer"], condition=Q(product_ids__isnull=True),
                         name="order_products_unknown"),
            # Daily revenue of a store and date-windowed order conditions.
            models.Index(fields=["store", "created_at"], name="order_store_created"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_counted(self) -> bool:
        return self.cancelled_at is None and not self.test

    @property
    def net_total(self):
        return self.total - self.refunded_amount


class LineItem(models.Model):
    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"))
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="line_items", verbose_name=_("order"))
    product = models.ForeignKey(
        Product,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="line_items",
        verbose_name=_("product"),
        help_text=_("Matched by SKU, else by title."),
    )
    sku = models.CharField(_("SKU"), max_length=255, blank=True)
    title = models.CharField(_("title"), max_length=500)
    vendor = models.CharField(_("vendor"), max_length=255, blank=True)
    product_type = models.CharField(_("product type"), max_length=255, blank=True)
    quantity = models.PositiveIntegerField(_("quantity"), default=1)
    unit_price = models.DecimalField(_("unit price"), default=0, **MONEY)
    discount = models.DecimalField(_("discount"), default=0, **MONEY)
    position = models.PositiveSmallIntegerField(_("position"), default=1)
    # Copies of the order's customer, creation time and ordinal, kept by customer_facts_refresh, so
    # products_purchased conditions read line items alone instead of joining millions of them to
    # their orders (docs/performance.md). Not checked by the database: the order is the truth.
    customer = models.ForeignKey(
        Customer, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", db_constraint=False,
        db_index=False, editable=False, verbose_name=_("customer"),
    )
    ordered_at = models.DateTimeField(_("ordered at"), null=True, blank=True, editable=False)
    ordinal = models.PositiveIntegerField(_("order number of the customer"), null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("line item")
        verbose_name_plural = _("line items")
        ordering = ["order", "position"]
        indexes = [
            # products_purchased, for a few customers (webhooks, incremental and daily runs) or all of them
            # in customer order: covering on PostgreSQL, so the lines are read from the index alone and the
            # wide line rows are not visited (docs/performance.md), also for conditions on a line's SKU,
            # type or vendor text. A few products on a small store use the product foreign key's own
            # index; an order's lines, the order's.
            models.Index(fields=["customer"], name="line_item_customer_cover",
                         include=["store", "ordinal", "ordered_at", "product", "order", "quantity", "sku",
                                  "product_type", "vendor"]),
            # A scoped facts refresh finds the lines of its customers' orders that have no copies yet (new
            # lines; lines whose order changed customer or creation time) without reading the others.
            models.Index(fields=["order"], condition=models.Q(ordered_at__isnull=True), name="line_item_uncopied"),
        ]

    def __str__(self) -> str:
        return self.title


class CsvImportStatus(models.TextChoices):
    PENDING = "pending", _("Waiting")
    RUNNING = "running", _("Running")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")


class CsvImport(models.Model):
    """One upload of Shopify CSV exports from the admin, imported by a background task."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="csv_imports", verbose_name=_("store"))
    customers_file = models.FileField(_("customers_export.csv"), upload_to="imports/%Y/%m/", blank=True)
    products_file = models.FileField(_("products_export.csv"), upload_to="imports/%Y/%m/", blank=True)
    orders_file = models.FileField(_("orders_export.csv"), upload_to="imports/%Y/%m/", blank=True)
    status = models.CharField(
        _("status"), max_length=10, choices=CsvImportStatus.choices, default=CsvImportStatus.PENDING
    )
    stage = models.CharField(_("stage"), max_length=20, blank=True)
    progress_done = models.PositiveIntegerField(_("done"), default=0)
    progress_total = models.PositiveIntegerField(_("total"), default=0)
    summary = models.JSONField(_("summary"), default=dict, blank=True)
    error = models.TextField(_("error"), blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, verbose_name=_("uploaded by")
    )
    created_at = models.DateTimeField(_("uploaded at"), auto_now_add=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        verbose_name = _("CSV import")
        verbose_name_plural = _("CSV imports")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.store} {self.created_at:%Y-%m-%d %H:%M}"

    @property
    def percent(self) -> int:
        if not self.progress_total:
            return 100 if self.status == CsvImportStatus.SUCCEEDED else 0
        return min(100, round(100 * self.progress_done / self.progress_total))


class StoreRole(models.TextChoices):
    VIEWER = "viewer", _("Viewer (read only)")
    EDITOR = "editor", _("Editor")
    OWNER = "owner", _("Owner")


class StoreMembership(models.Model):
    """A staff user's access to one store. Superusers see every store without one."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="store_memberships",
                             verbose_name=_("user"))
    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="memberships", verbose_name=_("store"))
    role = models.CharField(_("role"), max_length=10, choices=StoreRole.choices, default=StoreRole.VIEWER)

    class Meta:
        verbose_name = _("store membership")
        verbose_name_plural = _("store memberships")
        constraints = [models.UniqueConstraint(fields=["user", "store"], name="store_membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.store} ({self.role})"


class ApiKeyScope(models.TextChoices):
    READ = "read", _("Read")
    READ_WRITE = "read_write", _("Read and write")


class ApiKey(models.Model):
    """A partner tool's key to one store's API. Only a hash is kept; the key is shown once."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="api_keys", verbose_name=_("store"))
    name = models.CharField(_("name"), max_length=200, help_text=_("Who uses it, e.g. the LINE messaging tool."))
    # Public part of the key (``ecp_<prefix>_<secret>``): finds the row without scanning hashes.
    prefix = models.CharField(_("prefix"), max_length=16, unique=True, editable=False)
    key_hash = models.CharField(_("key hash"), max_length=64, editable=False)
    scope = models.CharField(_("scope"), max_length=10, choices=ApiKeyScope.choices, default=ApiKeyScope.READ)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+", verbose_name=_("created by"))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    last_used_at = models.DateTimeField(_("last used at"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked at"), null=True, blank=True)

    class Meta:
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")
        ordering = ["store", "name"]

    def __str__(self) -> str:
        return f"{self.name} (ecp_{self.prefix}_…)"
