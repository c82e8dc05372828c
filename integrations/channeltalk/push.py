"""Segment membership into Channel Talk users: segment names in a profile field, our tags in ``tags``.

For every customer in a segment marked for Channel Talk (held-out list members left out), or whom
we pushed before: the wanted segment names and tags (the segment's Shopify tag, else the store's
prefix + slug) are compared with what we last wrote (``ChannelTalkUser``); only changed customers
are sent. Channel Talk replaces the whole tag list on upsert, so each push reads the user's tags,
keeps every tag we did not set, drops ours that no longer apply and adds the new ones. What was
written is recorded user by user, so a push that stops half way (an outage, a crash) resumes with
the rest.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from ecpower.commerce.models import Customer, Store
from integrations.channeltalk.client import ChannelTalkClient
from integrations.http import PartnerError
from integrations.models import (
    ChannelTalkConnection,
    ChannelTalkUser,
    MemberIdSource,
    SyncJob,
    SyncJobKind,
    SyncJobStatus,
)
from segments.models import Membership, Segment

CHUNK = 1000


@dataclass
class PushResult:
    pushed: int = 0
    unchanged: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason → customers
    calls: int = 0

    def as_dict(self) -> dict:
        return {"partner": "channeltalk", "pushed": self.pushed, "unchanged": self.unchanged,
                "skipped": self.skipped, "calls": self.calls}


def connection_for(store: Store) -> ChannelTalkConnection:
    connection = ChannelTalkConnection.objects.filter(store=store, active=True).first()
    if connection is None:
        raise PartnerError(_("%(store)s is not connected to Channel Talk.") % {"store": store}, permanent=True)
    return connection


def client_for(connection: ChannelTalkConnection) -> ChannelTalkClient:
    return ChannelTalkClient(connection.access_key, connection.access_secret, base_url=connection.base_url)


def segment_tag(segment: Segment) -> str:
    return segment.shopify_tag or f"{segment.store.tag_prefix}{segment.slug}"


def merged_tags(current: list[str], ours_before: list[str], ours_now: list[str]) -> list[str]:
    """The user's tags with ours brought up to date; tags someone else set are kept as they are."""
    gone = set(ours_before) - set(ours_now)
    kept = [tag for tag in current if tag not in gone]
    return kept + [tag for tag in ours_now if tag not in kept]


def channeltalk_push(*, store: Store, client: ChannelTalkClient | None = None, progress=None) -> PushResult:
    connection = connection_for(store)
    client = client or client_for(connection)
    segments = list(connection.segments.filter(store=store).select_related("store").order_by("name"))
    names = {s.pk: s.name for s in segments}
    tags = {s.pk: segment_tag(s) for s in segments}
    wanted: dict[int, list[int]] = defaultdict(list)
    for customer_id, segment_id in Membership.objects.filter(segment__in=segments, holdout=False).values_list(
            "customer_id", "segment_id"):
        wanted[customer_id].append(segment_id)
    previous = {u.customer_id: u for u in ChannelTalkUser.objects.filter(store=store)}
    candidates = sorted(set(wanted) | set(previous))
    result = PushResult()
    for start in range(0, len(candidates), CHUNK):
        chunk = candidates[start:start + CHUNK]
        customers = Customer.objects.filter(store=store, pk__in=chunk).values_list("id", "shopify_id", "email")
        for customer_id, shopify_id, email in customers:
            segment_ids = wanted.get(customer_id, [])
            now_names = sorted(names[s] for s in segment_ids)
            now_tags = sorted(tags[s] for s in segment_ids)
            before = previous.get(customer_id)
            if before and before.segments == now_names and before.tags == now_tags:
                result.unchanged += 1
                continue
            member_id = str(shopify_id or "") if connection.member_id_source == MemberIdSource.SHOPIFY_ID else email
            if not member_id:
                reason = _("no Shopify id") if connection.member_id_source == MemberIdSource.SHOPIFY_ID else _("no email")
                result.skipped[reason] = result.skipped.get(reason, 0) + 1
                continue
            user = client.user_by_member_id(member_id)
            current = list((user or {}).get("tags") or [])
            client.upsert_user(member_id, profile={connection.profile_field: ", ".join(now_names)},
                               tags=merged_tags(current, before.tags if before else [], now_tags))
            with transaction.atomic():
                if now_names:
                    ChannelTalkUser.objects.update_or_create(
                        customer_id=customer_id, defaults={"store": store, "member_id": member_id,
                                                           "segments": now_names, "tags": now_tags,
                                                           "pushed_at": timezone.now()})
                else:  # cleared in Channel Talk: nothing of ours left to remember
                    ChannelTalkUser.objects.filter(customer_id=customer_id).delete()
            result.pushed += 1
            if progress and result.pushed % 50 == 0:
                progress("channeltalk", result.pushed + result.unchanged, len(candidates))
    result.calls = client.calls
    if progress:
        progress("channeltalk", len(candidates), len(candidates))
    return result


# --- as a job ---------------------------------------------------------------------------------------------


@transaction.atomic
def channeltalk_push_start(*, store: Store, user=None) -> SyncJob:
    connection_for(store)
    running = SyncJob.objects.filter(store=store, kind=SyncJobKind.PARTNER_PUSH, pipeline_run__isnull=True,
                                     status__in=[SyncJobStatus.PENDING, SyncJobStatus.RUNNING]).first()
    if running:
        return running
    job = SyncJob.objects.create(store=store, kind=SyncJobKind.PARTNER_PUSH, created_by=user,
                                 summary={"partner": "channeltalk"})

    def enqueue():
        from django_q.tasks import async_task

        async_task("integrations.channeltalk.push.channeltalk_push_run", job.pk,
                   hook="integrations.jobs.sync_job_hook", task_name=f"channeltalk-{job.pk}")

    transaction.on_commit(enqueue)
    return job


def channeltalk_push_run(job_id: int) -> str:
    """Run one push job; a transient outage leaves it for the retry, which sends only what is left."""
    from integrations.jobs import job_claim, job_progress, sync_job_finish

    job = job_claim(job_id)
    if job is None:
        return "skipped"
    try:
        result = channeltalk_push(store=job.store, progress=job_progress(job))
    except PartnerError as exc:
        if not exc.permanent:
            SyncJob.objects.filter(pk=job.pk).update(error=str(exc)[:2000], heartbeat_at=None)
            raise
        return sync_job_finish(job, SyncJobStatus.FAILED, error=str(exc))
    SyncJob.objects.filter(pk=job.pk).update(done=result.pushed + result.unchanged,
                                             total=result.pushed + result.unchanged + sum(result.skipped.values()))
    return sync_job_finish(job, SyncJobStatus.SUCCEEDED, summary=result.as_dict())
