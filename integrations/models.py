"""Connections to partner systems and the work done against them (docs/shopify.md).

* ``ShopifyConnection``: how one store reaches its Shopify shop (token, API version, import mark).
* ``SyncJob``: one import or tag sync, with the totals and done counts a progress bar reads.
* ``TagOperation``: the ledger's pending and applied work, one (customer, tag, add/remove) each.
* ``AppliedTag``: the tags this product wrote and Shopify holds; only these are ever removed.
* ``WebhookDelivery``: every webhook received, de-duplicated by Shopify's event id.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from ecpower.commerce.models import Customer, Store
from ecpower.crypto import EncryptedTextField


class ConnectionMethod(models.TextChoices):
    CUSTOM_APP = "custom_app", _("Custom app access token")
    OAUTH = "oauth", _("Public app (OAuth)")


class ShopifyConnection(models.Model):
    store = models.OneToOneField(Store, on_delete=models.CASCADE, related_name="shopify", verbose_name=_("store"))
    method = models.CharField(_("connected with"), max_length=12, choices=ConnectionMethod.choices,
                              default=ConnectionMethod.CUSTOM_APP)
    access_token = EncryptedTextField(_("Admin API access token"), blank=True, help_text=_("Stored encrypted."))
    refresh_token = EncryptedTextField(_("refresh token"), blank=True, help_text=_("Stored encrypted."))
    token_expires_at = models.DateTimeField(_("token expires at"), null=True, blank=True)
    scopes = models.CharField(_("granted scopes"), max_length=500, blank=True)
    api_secret = EncryptedTextField(
        _("API secret key"), blank=True,
        help_text=_("The custom app's API secret: signs its webhooks. Empty: SHOPIFY_API_SECRET is used."),
    )
    api_version = models.CharField(_("API version"), max_length=10, blank=True,
                                   help_text=_("Empty: the SHOPIFY_API_VERSION setting."))
    answered_version = models.CharField(
        _("version that answered"), max_length=10, blank=True,
        help_text=_("X-Shopify-API-Version of the last response; differs from the requested one when "
                    "Shopify has retired it."),
    )
    connected_at = models.DateTimeField(_("connected at"), null=True, blank=True)
    disconnected_at = models.DateTimeField(_("disconnected at"), null=True, blank=True)
    # Incremental imports ask for what changed after this instant (Shopify's updated_at).
    imported_until = models.DateTimeField(_("imported until"), null=True, blank=True)

    class Meta:
        verbose_name = _("Shopify connection")
        verbose_name_plural = _("Shopify connections")

    def __str__(self) -> str:
        return f"{self.store.shopify_domain}"

    @property
    def is_connected(self) -> bool:
        return bool(self.access_token) and self.disconnected_at is None


class SyncJobKind(models.TextChoices):
    IMPORT_FULL = "import_full", _("Initial import")
    IMPORT_CHANGES = "import_changes", _("Import of changes")
    TAG_SYNC = "tag_sync", _("Tag sync")
    TAG_REMOVE = "tag_remove", _("Tag removal")
    SEGMENTS_RECOMPUTE = "segments_recompute", _("Segment recompute")
    METRICS_SNAPSHOT = "metrics_snapshot", _("Daily snapshots")
    METRICS_BACKFILL = "metrics_backfill", _("Metrics backfill")
    PARTNER_PUSH = "partner_push", _("Partner push")
    SUMMARY_EMAIL = "summary_email", _("Summary email")


class SyncJobStatus(models.TextChoices):
    PENDING = "pending", _("Waiting")
    RUNNING = "running", _("Running")
    SUCCEEDED = "succeeded", _("Succeeded")
    PARTIAL = "partial", _("Finished with failures")
    FAILED = "failed", _("Failed")


class SyncJob(models.Model):
    """One import or tag sync of one store. Tasks take its id; running it twice does nothing new."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="sync_jobs", verbose_name=_("store"))
    kind = models.CharField(_("kind"), max_length=20, choices=SyncJobKind.choices)
    segment = models.ForeignKey("segments.Segment", on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="sync_jobs", verbose_name=_("segment"))
    pipeline_run = models.ForeignKey("metrics.PipelineRun", on_delete=models.CASCADE, null=True, blank=True,
                                     related_name="jobs", verbose_name=_("daily run"))
    status = models.CharField(_("status"), max_length=10, choices=SyncJobStatus.choices,
                              default=SyncJobStatus.PENDING)
    dry_run = models.BooleanField(_("dry run"), default=False)
    stage = models.CharField(_("stage"), max_length=40, blank=True)
    total = models.PositiveIntegerField(_("total"), default=0)
    done = models.PositiveIntegerField(_("done"), default=0)
    failed = models.PositiveIntegerField(_("failed"), default=0)
    summary = models.JSONField(_("summary"), default=dict, blank=True)
    error = models.TextField(_("error"), blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+", verbose_name=_("started by"))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    heartbeat_at = models.DateTimeField(_("last progress"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    notified_at = models.DateTimeField(_("summary emailed at"), null=True, blank=True)

    class Meta:
        verbose_name = _("sync job")
        verbose_name_plural = _("sync jobs")
        ordering = ["-created_at"]
        indexes = [
            # The admin and API list a store's jobs, newest first.
            models.Index(fields=["store", "-created_at"], name="sync_job_store_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk}"

    @property
    def percent(self) -> int:
        if not self.total:
            return 100 if self.status in (SyncJobStatus.SUCCEEDED, SyncJobStatus.PARTIAL) else 0
        return min(100, round(100 * (self.done + self.failed) / self.total))

    @property
    def is_finished(self) -> bool:
        return self.status in (SyncJobStatus.SUCCEEDED, SyncJobStatus.PARTIAL, SyncJobStatus.FAILED)


class TagAction(models.TextChoices):
    ADD = "add", _("Add")
    REMOVE = "remove", _("Remove")


class TagOperationStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")
    SKIPPED = "skipped", _("Skipped")


class TagOperation(models.Model):
    """One tag to add to or remove from one customer in Shopify, under a tag-sync job."""

    # The store and the job are served by the composite indexes below; their own indexes would only be written
    # to, once per operation (a diff writes 100,000 of them: docs/performance.md).
    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"),
                              db_index=False)
    job = models.ForeignKey(SyncJob, on_delete=models.CASCADE, related_name="tag_operations", verbose_name=_("job"),
                            db_index=False)
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="+", verbose_name=_("customer"))
    shopify_customer_id = models.BigIntegerField(_("Shopify customer ID"))
    tag = models.CharField(_("tag"), max_length=255)
    action = models.CharField(_("action"), max_length=6, choices=TagAction.choices)
    status = models.CharField(_("status"), max_length=8, choices=TagOperationStatus.choices,
                              default=TagOperationStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    # Set before a bulk mutation is started, so a restarted drain reads that operation's results.
    bulk_operation = models.CharField(_("bulk operation"), max_length=100, blank=True)
    error = models.TextField(_("error"), blank=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("tag operation")
        verbose_name_plural = _("tag operations")
        constraints = [
            # One operation per customer and tag in a job: a rerun of the planner adds nothing.
            models.UniqueConstraint(fields=["job", "customer", "tag"], name="tag_operation_unique_per_job"),
        ]
        indexes = [
            # The drain reads a job's pending operations in id order.
            models.Index(fields=["job", "status", "id"], name="tag_operation_job_status"),
            # The planner skips (customer, tag) pairs another unfinished job is still applying.
            models.Index(fields=["store", "tag", "status"], name="tag_operation_store_tag"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.tag} → {self.shopify_customer_id}"


class AppliedTag(models.Model):
    """The ledger: a tag this product added to a customer in Shopify and has not removed since."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"))
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="+", verbose_name=_("customer"))
    tag = models.CharField(_("tag"), max_length=255)
    applied_at = models.DateTimeField(_("applied at"), auto_now_add=True)

    class Meta:
        verbose_name = _("applied tag")
        verbose_name_plural = _("applied tags")
        constraints = [models.UniqueConstraint(fields=["customer", "tag"], name="applied_tag_unique")]
        indexes = [
            # The planner diffs one tag's wanted customers against this.
            models.Index(fields=["store", "tag"], name="applied_tag_store_tag"),
        ]

    def __str__(self) -> str:
        return self.tag


class WebhookStatus(models.TextChoices):
    RECEIVED = "received", _("Received")
    PROCESSED = "processed", _("Processed")
    IGNORED = "ignored", _("Ignored (stale or unknown)")
    FAILED = "failed", _("Failed")


class WebhookDelivery(models.Model):
    """A verified webhook. The event id makes Shopify's retries and duplicates land once."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, null=True, blank=True, related_name="+",
                              verbose_name=_("store"))
    shop_domain = models.CharField(_("shop"), max_length=255)
    topic = models.CharField(_("topic"), max_length=100)
    event_id = models.CharField(_("event id"), max_length=100)
    webhook_id = models.CharField(_("webhook id"), max_length=100, blank=True)
    api_version = models.CharField(_("API version"), max_length=10, blank=True)
    triggered_at = models.DateTimeField(_("triggered at"), null=True, blank=True)
    payload = models.JSONField(_("payload"))
    status = models.CharField(_("status"), max_length=10, choices=WebhookStatus.choices,
                              default=WebhookStatus.RECEIVED)
    result = models.TextField(_("result"), blank=True)
    received_at = models.DateTimeField(_("received at"), auto_now_add=True)
    processed_at = models.DateTimeField(_("processed at"), null=True, blank=True)

    class Meta:
        verbose_name = _("webhook delivery")
        verbose_name_plural = _("webhook deliveries")
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(fields=["shop_domain", "event_id"], name="webhook_unique_event"),
        ]
        indexes = [
            # The reaper finds deliveries whose processing never finished.
            models.Index(fields=["status"], condition=Q(status="received"), name="webhook_unprocessed"),
        ]

    def __str__(self) -> str:
        return f"{self.topic} {self.event_id}"


class OutboundEvent(models.TextChoices):
    MEMBER_JOINED = "segment.member_joined", _("Customers joined a segment")
    MEMBER_LEFT = "segment.member_left", _("Customers left a segment")
    JOB_FINISHED = "sync_job.finished", _("A sync job finished")


class WebhookEndpoint(models.Model):
    """A partner tool's HTTPS endpoint: the events it wants, signed with its own secret."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="webhook_endpoints",
                              verbose_name=_("store"))
    name = models.CharField(_("name"), max_length=200, help_text=_("Who receives it, e.g. the LINE messaging tool."))
    url = models.URLField(_("URL"), max_length=2000, help_text=_("HTTPS; http only for 127.0.0.1 or localhost."))
    events = models.JSONField(_("events"), default=list, help_text=_("The event types it receives."))
    secret = EncryptedTextField(_("signing secret"), help_text=_("Stored encrypted; shown once, when made."))
    paused_at = models.DateTimeField(_("paused at"), null=True, blank=True)
    pause_reason = models.TextField(_("why paused"), blank=True)
    consecutive_failures = models.PositiveIntegerField(_("failures in a row"), default=0)
    # The membership events (MembershipEvent ids) already turned into deliveries: a resumable ledger.
    membership_cursor = models.BigIntegerField(_("membership events sent up to"), default=0)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("webhook endpoint")
        verbose_name_plural = _("webhook endpoints")
        ordering = ["store", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_paused(self) -> bool:
        return self.paused_at is not None


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", _("Waiting")
    DELIVERED = "delivered", _("Delivered")
    FAILED = "failed", _("Gave up")


class WebhookMessage(models.Model):
    """One event for one endpoint: sent, retried with back-off, given up after the last attempt."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"))
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="messages",
                                 verbose_name=_("endpoint"))
    event = models.CharField(_("event"), max_length=40, choices=OutboundEvent.choices)
    delivery_id = models.UUIDField(_("delivery id"), unique=True, help_text=_("Sent as X-Ecpower-Delivery; the "
                                                                              "same on every retry."))
    payload = models.JSONField(_("payload"))
    status = models.CharField(_("status"), max_length=10, choices=DeliveryStatus.choices,
                              default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt at"))
    last_error = models.TextField(_("last error"), blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    delivered_at = models.DateTimeField(_("delivered at"), null=True, blank=True)

    class Meta:
        verbose_name = _("webhook message")
        verbose_name_plural = _("webhook messages")
        ordering = ["-id"]
        indexes = [
            # The drain sends an endpoint's due messages in order.
            models.Index(fields=["endpoint", "status", "next_attempt_at"], name="webhook_message_due"),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.endpoint_id}"


class WebhookAttempt(models.Model):
    """One try at delivering a message: what the endpoint answered, or why it could not."""

    message = models.ForeignKey(WebhookMessage, on_delete=models.CASCADE, related_name="attempt_log",
                                verbose_name=_("message"))
    attempted_at = models.DateTimeField(_("attempted at"), auto_now_add=True)
    status_code = models.PositiveSmallIntegerField(_("HTTP status"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True)
    duration_ms = models.PositiveIntegerField(_("duration (ms)"), default=0)

    class Meta:
        verbose_name = _("webhook attempt")
        verbose_name_plural = _("webhook attempts")
        ordering = ["message", "attempted_at"]

    def __str__(self) -> str:
        return f"{self.message_id} {self.status_code or self.error[:30]}"


class MappedAttribute(models.TextChoices):
    LOYALTY_TIER = "loyalty_tier", _("Loyalty tier")
    MEMBERSHIP_PLAN = "membership_plan", _("Membership plan")
    AFFILIATE_GROUP = "affiliate_group", _("Affiliate group")
    SIGNUP_SOURCE = "signup_source", _("Signup source")


class MatchKind(models.TextChoices):
    PREFIX = "prefix", _("Prefix (the value is the rest of the tag)")
    REGEX = "regex", _("Regular expression (the value is its first group)")


class TagMapping(models.Model):
    """Reads tags a partner app (AiTrillion) writes to Shopify customers as an attribute with a value.

    ``AIT-Tier-`` as a prefix reads ``AIT-Tier-Gold`` as loyalty tier ``Gold``; the regular expression
    ``^AIT-Plan-(\\w+)-v\\d$`` reads ``AIT-Plan-Premium-v2`` as plan ``Premium``. Matching ignores case.
    """

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="tag_mappings", verbose_name=_("store"))
    attribute = models.CharField(_("attribute"), max_length=20, choices=MappedAttribute.choices)
    kind = models.CharField(_("match by"), max_length=10, choices=MatchKind.choices, default=MatchKind.PREFIX)
    pattern = models.CharField(_("pattern"), max_length=255, help_text=_("A prefix such as AIT-Tier-, or a regular "
                                                                         "expression with one group."))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("tag mapping")
        verbose_name_plural = _("tag mappings")
        ordering = ["store", "attribute", "id"]

    def __str__(self) -> str:
        return f"{self.get_attribute_display()}: {self.pattern}"


class MemberIdSource(models.TextChoices):
    SHOPIFY_ID = "shopify_id", _("Shopify customer id")
    EMAIL = "email", _("Email address")


class ChannelTalkConnection(models.Model):
    """A store's Channel Talk channel and the segments pushed to its users."""

    store = models.OneToOneField(Store, on_delete=models.CASCADE, related_name="channeltalk", verbose_name=_("store"))
    access_key = EncryptedTextField(_("access key"), help_text=_("Stored encrypted."))
    access_secret = EncryptedTextField(_("access secret"), help_text=_("Stored encrypted."))
    base_url = models.URLField(_("API address"), default="https://api.channel.io",
                               help_text=_("The local emulator for the demo and tests."))
    member_id_source = models.CharField(_("memberId is"), max_length=20, choices=MemberIdSource.choices,
                                        default=MemberIdSource.SHOPIFY_ID)
    profile_field = models.CharField(_("profile field"), max_length=100, default="ecpSegments",
                                     help_text=_("User profile key that receives the segment names."))
    segments = models.ManyToManyField("segments.Segment", blank=True, related_name="+",
                                      verbose_name=_("segments pushed"))
    active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("Channel Talk connection")
        verbose_name_plural = _("Channel Talk connections")

    def __str__(self) -> str:
        return f"Channel Talk: {self.store}"


class ChannelTalkUser(models.Model):
    """What we last wrote to one customer's Channel Talk user: only changes are pushed again."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+", verbose_name=_("store"))
    customer = models.OneToOneField(Customer, on_delete=models.CASCADE, related_name="+",
                                    verbose_name=_("customer"))
    member_id = models.CharField(_("memberId"), max_length=255)
    segments = models.JSONField(_("segment names"), default=list)
    tags = models.JSONField(_("our tags"), default=list, help_text=_("Tags we set; only these are ever removed."))
    pushed_at = models.DateTimeField(_("pushed at"))

    class Meta:
        verbose_name = _("Channel Talk user")
        verbose_name_plural = _("Channel Talk users")

    def __str__(self) -> str:
        return self.member_id
