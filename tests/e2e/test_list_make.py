"""Making a list in a real browser: origin switch, live count from the builder, holdout, CSV upload."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from segments.models import ListSegment, Membership
from segments.services import segment_create, segment_recompute
from tests.e2e.conftest import SCREENSHOTS, admin_login
from tests.factories import CustomerFactory, StoreFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tagged_store(django_user_model):
    """Ten customers: 0–5 tagged vip, the even ones unsub; a segment of each tag; an admin, hanako."""
    store = StoreFactory(name="茶舗", shopify_domain="tea.myshopify.com")
    people = [CustomerFactory(store=store, email=f"p{i}@example.jp") for i in range(10)]
    for i, person in enumerate(people):
        if i < 6:
            person.tags.create(store=store, name="vip")
        if i % 2 == 0:
            person.tags.create(store=store, name="unsub")
    for slug in ("vip", "unsub"):
        segment_recompute(segment=segment_create(store=store, name=slug.upper(), slug=slug,
                                                 query=f"customer_tags CONTAINS '{slug}'"))
    django_user_model.objects.create_superuser("hanako", "hanako@example.jp", "pw-for-tests")
    return store, people


def test_make_a_list_with_live_count_then_from_a_csv(browser_page, live_server, tagged_store, tmp_path):
    store, people = tagged_store
    page = browser_page
    admin_login(page, live_server, "hanako", "pw-for-tests")

    page.goto(f"{live_server.url}/admin/segments/listsegment/add/")
    page.select_option("#id_store", str(store.pk))
    page.fill("#id_name", "キャンペーン対象")
    page.fill("#id_slug", "campaign")
    page.check("input[name=origin][value=expression]")
    assert page.locator("fieldset[data-origin=expression]").is_visible()
    assert not page.locator("fieldset[data-origin=csv]").is_visible()

    # A typed expression with a mistake: the located problem shows, then the fixed one counts.
    page.fill("#id_expression", "vip -")
    # Waits for this expression's answer: the empty one, asked for when the origin was chosen, may show first.
    page.wait_for_function("document.querySelector('#list-preview-problems').textContent.includes('line 1, column 6')")
    assert page.locator("#list-preview-problems").is_visible()
    page.fill("#id_expression", "")
    page.select_option("#id_any_of", label=next(o for o in page.locator("#id_any_of option").all_inner_texts()
                                                 if o.startswith("VIP")))
    page.select_option("#id_minus", label=next(o for o in page.locator("#id_minus option").all_inner_texts()
                                               if o.startswith("UNSUB")))
    page.fill("#id_holdout_percent", "34")
    page.wait_for_function("document.querySelector('#list-preview-definition').textContent === 'vip - unsub'")
    assert page.locator("#list-preview-count strong").inner_text() == "3"  # vip {0..5} minus even ones
    assert "1 " in page.locator("#list-preview-count").inner_text()  # 34 % of 3 held out
    page.screenshot(path=str(SCREENSHOTS / "list_make_builder.png"), full_page=True)
    page.click("#list-make-form input[type=submit]")
    page.wait_for_url("**/listsegment/*/change/")
    made = ListSegment.objects.get(slug="campaign")
    assert made.expression == "vip - unsub" and made.member_count == 3 and made.holdout_count == 1
    assert "vip - unsub" in page.locator(".field-origin_summary").inner_text()

    # From a CSV: the match report is on the list's page.
    upload = tmp_path / "targets.csv"
    upload.write_bytes("メールアドレス\r\np1@example.jp\r\nnobody@example.jp\r\np1@example.jp\r\n".encode("cp932"))
    page.goto(f"{live_server.url}/admin/segments/listsegment/add/")
    page.select_option("#id_store", str(store.pk))
    page.fill("#id_name", "アップロード")
    page.check("input[name=origin][value=csv]")
    page.set_input_files("#id_csv_file", str(upload))
    page.click("#list-make-form input[type=submit]")
    page.wait_for_url("**/listsegment/*/change/")
    report = page.locator(".field-upload_report").inner_text()
    assert "cp932" in report and "メールアドレス" in report
    page.screenshot(path=str(SCREENSHOTS / "list_match_report.png"), full_page=True)
    uploaded = ListSegment.objects.get(name="アップロード")
    assert list(Membership.objects.filter(segment=uploaded).values_list("customer_id", flat=True)) == [people[1].pk]
    # The report is written in the language of the person who uploaded (the browser asks for Japanese).
    assert uploaded.upload.unmatched == [[3, "nobody@example.jp", "このメールアドレスの顧客はストアにいません。"]]


def test_an_answer_for_what_the_form_held_before_the_last_keystroke_is_not_shown(
        browser_page, live_server, tagged_store):
    """The preview asks 300 ms after the last keystroke. An answer to the expression as it was, arriving in
    that pause, is not shown: the count then would not be the expression's in the form. The page's clock
    is Playwright's here, so the pause lasts until the test moves it on."""
    store, _people = tagged_store
    page = browser_page
    admin_login(page, live_server, "hanako", "pw-for-tests")

    held = []  # the answer to "vip - unsub" waits until the user has typed on

    def hold_the_first_question(route, request):
        if "vip - unsub" in (request.post_data or "") and not held:
            held.append(route)
        else:
            route.continue_()

    page.clock.install(time=dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC))
    page.route(re.compile(r".*/listsegment/preview/$"), hold_the_first_question)
    page.goto(f"{live_server.url}/admin/segments/listsegment/add/")
    page.clock.pause_at(dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC))  # from here on, time moves when the test says
    page.select_option("#id_store", str(store.pk))
    page.check("input[name=origin][value=expression]")
    page.fill("#id_expression", "vip - unsub")
    page.clock.run_for(400)  # the pause ends: the page asks
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1

    page.fill("#id_expression", "vip")  # its question waits for the pause to end
    with page.expect_response(lambda response: "vip - unsub" in (response.request.post_data or "")):
        held[0].continue_()
    page.wait_for_timeout(300)  # real time, for the page to read the answer
    assert page.locator("#list-preview-definition").inner_text() == ""
    assert page.locator("#list-preview-count strong").count() == 0  # still "checking", not 3

    page.clock.run_for(400)
    page.wait_for_function("document.querySelector('#list-preview-definition').textContent === 'vip'")
    assert page.locator("#list-preview-count strong").inner_text() == "6"
