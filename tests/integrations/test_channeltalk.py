"""Channel Talk push against the local emulator over real HTTP: membership changes land, foreign tags
survive, 429s and faults are weathered, nothing is sent when nothing changed, a job and the daily run."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core import mail

from ecpower.commerce.services import customer_facts_refresh
from integrations.channeltalk.client import ChannelTalkClient
from integrations.channeltalk.emulator import ChannelTalkEmulator
from integrations.channeltalk.push import channeltalk_push, channeltalk_push_run, channeltalk_push_start, merged_tags
from integrations.http import PartnerAuthError
from integrations.models import ChannelTalkConnection, ChannelTalkUser, SyncJob
from segments.lists import list_create_from_segment
from segments.services import segment_create, segment_recompute, segment_update
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def channel():
    emulator = ChannelTalkEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture
def store(channel):
    store = StoreFactory(notification_email="crm@example.jp")
    for n in range(6):
        customer = CustomerFactory(store=store, shopify_id=7000 + n, email=f"c{n}@example.jp")
        for _ in range(n % 3):
            OrderFactory(store=store, customer=customer)
    customer_facts_refresh(store=store)
    buyers = segment_create(store=store, name="購入者", slug="buyers", query="number_of_orders >= 1",
                            shopify_tag="ecp-buyers")
    repeat = segment_create(store=store, name="リピーター", slug="repeat", query="number_of_orders >= 2")
    for segment in (buyers, repeat):
        segment_recompute(segment=segment)
    connection = ChannelTalkConnection.objects.create(store=store, access_key="ct-key", access_secret="ct-secret",
                                                      base_url=channel.base_url)
    connection.segments.set([buyers, repeat])
    return store


def test_members_get_segment_names_and_our_tags_and_foreign_tags_survive(store, channel):
    channel.state.add_user("7002", tags=["VIP対応", "ecp-old-campaign"], profile={"name": "花子"})
    result = channeltalk_push(store=store)
    assert (result.pushed, result.unchanged) == (4, 0)  # customers 1, 2, 4, 5 have orders
    users = channel.state.users
    assert set(users) == {"7001", "7002", "7004", "7005"}
    assert users["7002"]["profile"] == {"name": "花子", "ecpSegments": "リピーター, 購入者"}
    assert users["7002"]["tags"] == ["VIP対応", "ecp-old-campaign", "ecp-buyers", "ecp-repeat"]  # theirs kept
    assert users["7001"]["tags"] == ["ecp-buyers"]


def test_only_changed_users_are_pushed_and_leaving_removes_only_our_tag(store, channel):
    channeltalk_push(store=store)
    calls = len(channel.state.requests)
    again = channeltalk_push(store=store)
    assert (again.pushed, again.unchanged) == (0, 4) and len(channel.state.requests) == calls  # nothing sent
    channel.state.users["7001"]["tags"].append("LINE友だち")  # someone else tags the user meanwhile
    repeat = store.segments.get(slug="repeat")
    segment_recompute(segment=segment_update(segment=repeat, query="number_of_orders >= 1"))  # 1 and 4 join
    buyers = store.segments.get(slug="buyers")
    segment_recompute(segment=segment_update(segment=buyers, query="number_of_orders >= 2"))  # 1 and 4 leave
    result = channeltalk_push(store=store)
    assert (result.pushed, result.unchanged) == (2, 2)  # 1 and 4 moved; 2 and 5 are in both before and after
    assert channel.state.users["7001"]["tags"] == ["LINE友だち", "ecp-repeat"]
    assert channel.state.users["7001"]["profile"]["ecpSegments"] == "リピーター"


def test_rate_limits_and_faults_are_weathered(store, channel):
    channel.state.limit_per_second = 3
    channel.state.faults = 2
    client = ChannelTalkClient("ct-key", "ct-secret", base_url=channel.base_url)
    result = channeltalk_push(store=store, client=client)
    assert result.pushed == 4 and len(channel.state.users) == 4
    assert client.calls > 8  # 4 reads + 4 upserts, plus the retries after 500s and 429s


def test_wrong_keys_stop_the_job_and_it_is_reported(store, channel):
    ChannelTalkConnection.objects.filter(store=store).update(access_secret="wrong")
    with pytest.raises(PartnerAuthError):
        channeltalk_push(store=store)
    job = SyncJob.objects.create(store=store, kind="partner_push")
    assert channeltalk_push_run(job.pk) == "failed"
    job.refresh_from_db()
    assert "refused the API key" in job.error and "Partner push" in mail.outbox[0].subject


def test_a_push_job_with_progress_and_holdout_members_left_out(store, channel, django_capture_on_commit_callbacks):
    buyers = store.segments.get(slug="buyers")
    frozen = list_create_from_segment(source=buyers, name="Spring", slug="spring", holdout_percent=50, seed=1)
    ChannelTalkConnection.objects.get(store=store).segments.set([frozen])
    with django_capture_on_commit_callbacks(execute=True):
        job = channeltalk_push_start(store=store)
    job.refresh_from_db()
    assert job.status == "succeeded" and job.summary["pushed"] == 2 and (job.done, job.total) == (2, 2)
    assert "Channel Talk users updated: 2, unchanged: 0" in mail.outbox[-1].body
    held = set(frozen.memberships.filter(holdout=True).values_list("customer__shopify_id", flat=True))
    assert not held & {int(m) for m in channel.state.users}
    assert ChannelTalkUser.objects.count() == 2


def test_merging_keeps_foreign_tags_in_place():
    assert merged_tags(["a", "ecp-x", "b"], ["ecp-x"], ["ecp-y"]) == ["a", "b", "ecp-y"]
    assert merged_tags(["ecp-y"], [], ["ecp-y"]) == ["ecp-y"]


def test_the_daily_run_pushes_to_channel_talk(store, channel):
    from metrics.models import PipelineRun
    from metrics.pipeline import pipeline_run

    run = PipelineRun.objects.create(store=store, date=dt.date.today())
    pipeline_run(run.pk)
    run.refresh_from_db()
    assert run.summary["partners"]["status"] == "succeeded" and len(channel.state.users) == 4


def test_connect_and_push_from_the_command_line(store, channel):
    import io

    from django.core.management import CommandError, call_command

    ChannelTalkConnection.objects.all().delete()
    out = io.StringIO()
    call_command("channeltalk", "connect", "--store", store.shopify_domain, "--key", "ct-key", "--secret",
                 "ct-secret", "--url", channel.base_url, "--segments", "repeat", stdout=out)
    assert "1 segments pushed" in out.getvalue()
    call_command("channeltalk", "push", "--store", store.shopify_domain, stdout=out)
    assert "pushed 2" in out.getvalue() and set(channel.state.users) == {"7002", "7005"}
    with pytest.raises(CommandError, match="No segment nope"):
        call_command("channeltalk", "connect", "--store", store.shopify_domain, "--key", "k", "--secret", "s",
                     "--segments", "nope")


def test_channel_talk_settings_over_the_api(store, channel, django_capture_on_commit_callbacks):
    from django.urls import reverse
    from rest_framework.test import APIClient

    from ecpower.commerce.access import api_key_create
    from ecpower.commerce.models import ApiKeyScope

    _key, raw = api_key_create(store=store, name="ops", scope=ApiKeyScope.READ_WRITE)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    connection = ChannelTalkConnection.objects.get(store=store)
    detail = client.get(reverse("channel-talk-detail", args=[connection.pk])).json()
    assert "access_secret" not in detail and detail["profile_field"] == "ecpSegments"
    repeat = store.segments.get(slug="repeat")
    changed = client.patch(reverse("channel-talk-detail", args=[connection.pk]),
                           {"segments": [repeat.pk], "profile_field": "segments"}, format="json")
    assert changed.status_code == 200 and changed.json()["segments"] == [repeat.pk]
    with django_capture_on_commit_callbacks(execute=True):
        pushed = client.post(reverse("channel-talk-push", args=[connection.pk]))
    assert pushed.status_code == 202 and SyncJob.objects.get(pk=pushed.json()["id"]).status == "succeeded"
    assert channel.state.users["7002"]["profile"] == {"segments": "リピーター"}


def test_a_failing_partner_fails_the_step_and_a_working_one_makes_it_partial(store, channel):
    from metrics.models import PipelineRun
    from metrics.pipeline import pipeline_run

    ChannelTalkConnection.objects.filter(store=store).update(access_secret="wrong")
    run = PipelineRun.objects.create(store=store, date=dt.date.today())
    pipeline_run(run.pk)
    run.refresh_from_db()
    assert run.summary["partners"]["status"] == "failed" and "refused the API key" in run.summary["partners"]["error"]

    from integrations.outbound import webhook_endpoint_create

    webhook_endpoint_create(store=store, name="BI", url="https://partner.example.jp/hook", events=["sync_job.finished"])
    second = PipelineRun.objects.create(store=store, date=dt.date.today() + dt.timedelta(days=1))
    pipeline_run(second.pk)
    second.refresh_from_db()
    assert second.summary["partners"]["status"] == "partial"
