"""Segment tags in Shopify, kept as a ledger (docs/shopify.md, "Tag sync").

1. **Plan** (``tag_sync_plan``): the wanted customers (the segment's targets: held-out members
   left out, customers without a Shopify id skipped) are diffed against ``AppliedTag``, the ledger
   of tags this product wrote. Adds and removes become pending ``TagOperation`` rows of the job,
   written with one INSERT … SELECT each. A customer who already carries the tag although we never
   wrote it is left alone (the tag is not ours to own or remove); a customer at Shopify's 250-tag
   limit gets a skipped add with the reason.
2. **Drain** (``tag_sync_drain``): pending rows are applied with batched ``tagsAdd``/``tagsRemove``
   calls, or, above ``TAG_SYNC_BULK_THRESHOLD``, with a bulk mutation whose per-line results are
   read back. Each batch's rows, the ledger, the local tag mirror and the tag history change in
   one transaction, so a crash loses nothing: a restart drains what is still pending, and a bulk
   operation already started is read back rather than started again.

Only tags starting with the store's prefix are written, and only ledger tags are ever removed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.db import connection, models, transaction
from django.db.models import Count, Value
from django.utils import timezone
from django.utils.translation import gettext as _

from ecpower.commerce.models import Customer, CustomerTag, CustomerTagEvent, Store, TagEventAction
from integrations.http import PartnerError
from integrations.models import AppliedTag, SyncJob, SyncJobKind, TagAction, TagOperation, TagOperationStatus
from integrations.shopify.client import ShopifyClient, UserErrors, gid
from segments.models import Segment
from segments.selectors import segment_targets

MAX_TAGS = 250
MAX_ATTEMPTS = 5
CALL_BATCH = 25  # aliased tagsAdd/tagsRemove per request: 250 points, a quarter of the single-query cap
BULK_CHUNK = 50_000  # operations per bulk mutation file
SAMPLE = 50

TAG_ADD_MUTATION = ("mutation call($id: ID!, $tags: [String!]!) { tagsAdd(id: $id, tags: $tags) "
                    "{ node { id } userErrors { field message } } }")
TAG_REMOVE_MUTATION = ("mutation call($id: ID!, $tags: [String!]!) { tagsRemove(id: $id, tags: $tags) "
                       "{ node { id } userErrors { field message } } }")


class TagSyncRefused(PartnerError):
    permanent = True


def segment_tag(segment: Segment) -> str:
    """The segment's Shopify tag; refused unless it carries the store's prefix (our namespace)."""
    tag = (segment.shopify_tag or "").strip()
    prefix = segment.store.tag_prefix
    if not tag:
        raise TagSyncRefused(_("Segment %(name)s has no Shopify tag.") % {"name": segment.name})
    if prefix and not tag.startswith(prefix):
        raise TagSyncRefused(
            _("The tag %(tag)s does not start with the store's prefix %(prefix)s; only prefixed tags are written.")
            % {"tag": tag, "prefix": prefix}
        )
    if "," in tag or len(tag) > 255:
        raise TagSyncRefused(_("A Shopify tag has no commas and at most 255 characters: %(tag)s") % {"tag": tag})
    return tag


# --- plan ----------------------------------------------------------------------------------------


@dataclass
class TagPlan:
    tag: str
    adds: int = 0
    removes: int = 0
    present_not_ours: int = 0
    at_tag_limit: int = 0
    in_other_jobs: int = 0
    samples: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"tag": self.tag, "adds": self.adds, "removes": self.removes, "present_not_ours": self.present_not_ours,
                "at_tag_limit": self.at_tag_limit, "in_other_jobs": self.in_other_jobs, "samples": self.samples}


def _diff(store: Store, segment: Segment, tag: str, *, remove_all: bool):
    ledger = AppliedTag.objects.filter(store=store, tag=tag).values("customer_id")
    busy = TagOperation.objects.filter(store=store, tag=tag, status=TagOperationStatus.PENDING).values("customer_id")
    carrying = CustomerTag.objects.filter(store=store, name=tag).values("customer_id")
    if remove_all:
        wanted = Customer.objects.none()
    else:
        wanted = segment_targets(segment).filter(shopify_id__isnull=False)
    adds = wanted.exclude(pk__in=ledger).exclude(pk__in=busy)
    removes = Customer.objects.filter(store=store, pk__in=ledger, shopify_id__isnull=False).exclude(pk__in=busy)
    if not remove_all:
        removes = removes.exclude(pk__in=wanted.values("pk"))
    return adds.exclude(pk__in=carrying), adds.filter(pk__in=carrying), removes, wanted.filter(pk__in=busy)


def _full_customers(store: Store):
    return (CustomerTag.objects.filter(store=store).values("customer_id").annotate(n=Count("id"))
            .filter(n__gte=MAX_TAGS).values("customer_id"))


def tag_sync_plan(*, job: SyncJob) -> TagPlan:
    """Write the job's operations (or, for a dry run, only count and sample them). Runs once per job."""
    segment = job.segment
    store = job.store
    tag = segment_tag(segment)
    remove_all = job.kind == SyncJobKind.TAG_REMOVE
    adds, not_ours, removes, busy = _diff(store, segment, tag, remove_all=remove_all)
    plan = TagPlan(tag=tag, present_not_ours=not_ours.count(), in_other_jobs=busy.count())
    full = adds.filter(pk__in=_full_customers(store))
    plan.at_tag_limit = full.count()
    if job.dry_run:
        plan.adds = adds.count() - plan.at_tag_limit
        plan.removes = removes.count()
        for action, qs in ((TagAction.ADD, adds.exclude(pk__in=full.values("pk"))), (TagAction.REMOVE, removes)):
            for customer_id, shopify_id, email in qs.order_by("pk").values_list("pk", "shopify_id", "email")[:SAMPLE]:
                plan.samples.append({"action": action, "customer": customer_id, "shopify_id": shopify_id,
                                     "email": email, "tag": tag})
        return plan
    with transaction.atomic():
        locked = SyncJob.objects.select_for_update().get(pk=job.pk)
        if locked.summary.get("planned"):
            return TagPlan(**{k: v for k, v in locked.summary["plan"].items() if k in TagPlan.__dataclass_fields__})
        _insert_operations(job, tag, TagAction.ADD, adds)
        _insert_operations(job, tag, TagAction.REMOVE, removes)
        now = timezone.now()
        TagOperation.objects.filter(job=job, action=TagAction.ADD, customer_id__in=_full_customers(store)).update(
            status=TagOperationStatus.SKIPPED, updated_at=now,
            error=_("The customer already has %(n)s tags, Shopify's limit.") % {"n": MAX_TAGS})
        counts = dict(TagOperation.objects.filter(job=job).values_list("action").annotate(n=Count("id")))
        plan.adds = counts.get(TagAction.ADD, 0) - plan.at_tag_limit
        plan.removes = counts.get(TagAction.REMOVE, 0)
        summary = {**locked.summary, "planned": True, "plan": plan.as_dict()}
        SyncJob.objects.filter(pk=job.pk).update(
            summary=summary, total=plan.adds + plan.removes, failed=plan.at_tag_limit, stage="planned",
            heartbeat_at=now)
    return plan


def _insert_operations(job: SyncJob, tag: str, action: str, customers) -> None:
    """INSERT INTO tag operations SELECT … FROM the customers query: one statement, any size."""
    now = timezone.now()
    rows = customers.order_by().annotate(
        _job=Value(job.pk, output_field=models.BigIntegerField()),
        _tag=Value(tag, output_field=models.CharField()),
        _action=Value(action, output_field=models.CharField()),
        _status=Value(TagOperationStatus.PENDING, output_field=models.CharField()),
        _attempts=Value(0, output_field=models.IntegerField()),
        _blank=Value("", output_field=models.CharField()),
        _now=Value(now, output_field=models.DateTimeField()),
    ).values_list("_job", "store_id", "pk", "shopify_id", "_tag", "_action", "_status", "_attempts", "_blank",
                  "_blank", "_now")
    try:
        sql, params = rows.query.sql_with_params()
    except EmptyResultSet:  # e.g. nobody is wanted when a tag is removed from everyone
        return
    table = TagOperation._meta.db_table
    columns = "job_id, store_id, customer_id, shopify_customer_id, tag, action, status, attempts, bulk_operation, " \
              "error, updated_at"
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} ({columns}) {sql}", params)


# --- drain ---------------------------------------------------------------------------------------


@dataclass
class DrainResult:
    done: int = 0
    failed: int = 0
    calls: int = 0
    bulk_operations: int = 0


def _pending(job: SyncJob):
    return TagOperation.objects.filter(job=job, status=TagOperationStatus.PENDING)


def tag_sync_drain(*, job: SyncJob, client: ShopifyClient, progress=None) -> DrainResult:
    """Apply the job's pending operations until none is left (failed rows retried up to 5 times)."""
    result = DrainResult()
    threshold = settings.TAG_SYNC_BULK_THRESHOLD
    # A bulk operation started before a restart is read back, not started again.
    for operation_id in (_pending(job).exclude(bulk_operation="").values_list("bulk_operation", flat=True)
                         .distinct().order_by()):
        _bulk_finish(job, client, operation_id, result)
    while True:
        pending = _pending(job).count()
        if not pending:
            break
        if pending > threshold:
            _drain_bulk(job, client, result)
        else:
            _drain_calls(job, client, result)
        if progress:
            progress()
    return result


def _drain_calls(job: SyncJob, client: ShopifyClient, result: DrainResult) -> None:
    while True:
        batch = list(_pending(job).order_by("action", "id")[:CALL_BATCH])
        if not batch:
            return
        action = batch[0].action
        batch = [op for op in batch if op.action == action]
        failures = client.tags_change(action, [(op.shopify_customer_id, [op.tag]) for op in batch])
        result.calls += 1
        _record(job, batch, {op.pk: failures[op.shopify_customer_id] for op in batch
                             if op.shopify_customer_id in failures}, result, permanent=True)


def _drain_bulk(job: SyncJob, client: ShopifyClient, result: DrainResult) -> None:
    for action, mutation in ((TagAction.ADD, TAG_ADD_MUTATION), (TagAction.REMOVE, TAG_REMOVE_MUTATION)):
        while True:
            waiting = _pending(job).filter(action=action, bulk_operation="").order_by("id")
            rows = list(waiting.values_list("pk", "shopify_customer_id", "tag")[:BULK_CHUNK])
            if not rows:
                break
            chunk = waiting.filter(id__lte=rows[-1][0])  # exactly these rows, without a huge IN list
            content = "".join(bulk_mutation_lines((shopify_id, tag) for _pk, shopify_id, tag in rows)).encode()
            key = client.staged_upload(f"ecpower-job-{job.pk}-{action}.jsonl", content)
            operation_id = client.bulk_mutation(mutation, key, client_identifier=f"ecpower-job-{job.pk}")
            result.bulk_operations += 1
            # Recorded at once: the line order of the file maps results back to these rows.
            chunk.update(bulk_operation=operation_id)
            _bulk_finish(job, client, operation_id, result)


def bulk_mutation_lines(operations: Iterable[tuple[int, str]]) -> Iterator[str]:
    """The bulk mutation file's lines, one per (Shopify customer id, tag) in order (results come back by line
    number). Read as two columns, not as model instances: a file holds 50,000 operations."""
    for shopify_customer_id, tag in operations:
        yield json.dumps({"id": gid("Customer", shopify_customer_id), "tags": [tag]}) + "\n"


def _bulk_finish(job: SyncJob, client: ShopifyClient, operation_id: str, result: DrainResult) -> None:
    ops = list(_pending(job).filter(bulk_operation=operation_id).order_by("id"))
    operation = client.bulk_wait(operation_id)
    if operation["status"] != "COMPLETED":
        # The whole operation failed: every row goes back to the queue (counted as an attempt).
        _record(job, ops, {op.pk: f"Bulk operation {operation['status']} ({operation.get('errorCode')})"
                           for op in ops}, result, permanent=False)
        return
    failures: dict[int, str] = {}
    answered: set[int] = set()
    for line in client.download_lines(operation.get("url")):
        number = line.get("__lineNumber")
        if number is None or number >= len(ops):
            continue
        op = ops[number]
        answered.add(op.pk)
        if line.get("errors"):
            failures[op.pk] = "; ".join(e.get("message", "") for e in line["errors"])
            continue
        payload = next(iter((line.get("data") or {}).values()), None) or {}
        if payload.get("userErrors"):
            failures[op.pk] = "PERMANENT: " + "; ".join(e["message"] for e in payload["userErrors"])
    for op in ops:
        if op.pk not in answered:
            failures[op.pk] = "No result line"
    _record(job, ops, failures, result, permanent=False)


def _record(job: SyncJob, ops: list[TagOperation], failures: dict[int, str], result: DrainResult,
            *, permanent: bool) -> None:
    """Mark a batch applied or failed; applied rows update the ledger, the tag mirror and the history."""
    now = timezone.now()
    done = [op for op in ops if op.pk not in failures]
    failed_now = 0
    with transaction.atomic():
        for op in ops:
            if op.pk not in failures:
                continue
            message = failures[op.pk]
            final = permanent or message.startswith("PERMANENT: ") or op.attempts + 1 >= MAX_ATTEMPTS
            TagOperation.objects.filter(pk=op.pk).update(
                attempts=op.attempts + 1, error=message.removeprefix("PERMANENT: ")[:1000], bulk_operation="",
                status=TagOperationStatus.FAILED if final else TagOperationStatus.PENDING, updated_at=now)
            failed_now += final
        for part in _chunks(done):
            TagOperation.objects.filter(pk__in=[op.pk for op in part]).update(
                status=TagOperationStatus.DONE, attempts=models.F("attempts") + 1, error="", updated_at=now)
        adds = [op for op in done if op.action == TagAction.ADD]
        removes = [op for op in done if op.action == TagAction.REMOVE]
        AppliedTag.objects.bulk_create(
            [AppliedTag(store_id=op.store_id, customer_id=op.customer_id, tag=op.tag) for op in adds],
            ignore_conflicts=True, batch_size=1000)
        CustomerTag.objects.bulk_create(
            [CustomerTag(store_id=op.store_id, customer_id=op.customer_id, name=op.tag) for op in adds],
            ignore_conflicts=True, batch_size=1000)
        for tag in {op.tag for op in removes}:
            for part in _chunks([op.customer_id for op in removes if op.tag == tag]):
                AppliedTag.objects.filter(store_id=job.store_id, tag=tag, customer_id__in=part).delete()
                CustomerTag.objects.filter(store_id=job.store_id, name=tag, customer_id__in=part).delete()
        CustomerTagEvent.objects.bulk_create([
            CustomerTagEvent(store_id=op.store_id, customer_id=op.customer_id, name=op.tag, occurred_at=now,
                             source="sync",
                             action=TagEventAction.ADDED if op.action == TagAction.ADD else TagEventAction.REMOVED)
            for op in done])
        SyncJob.objects.filter(pk=job.pk).update(
            done=models.F("done") + len(done), failed=models.F("failed") + failed_now, heartbeat_at=now)
    result.done += len(done)
    result.failed += failed_now


def _chunks(items: list, size: int = 1000):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def native_segment_create(*, segment: Segment, client: ShopifyClient) -> str:
    """A Shopify customer segment ``customer_tags CONTAINS '<tag>'`` named after the tag (kept if it exists)."""
    tag = segment_tag(segment)
    try:
        return client.segment_create(tag, f"customer_tags CONTAINS '{tag}'")["id"]
    except UserErrors as exc:
        if any("taken" in e.get("message", "") for e in exc.errors):
            return ""
        raise
