"""Making a list in a real browser: origin switch, live count from the builder, holdout, CSV upload."""

from __future__ import annotations

import pytest

from segments.models import ListSegment, Membership
from tests.e2e.conftest import SCREENSHOTS, admin_login

pytestmark = pytest.mark.django_db(transaction=True)


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
