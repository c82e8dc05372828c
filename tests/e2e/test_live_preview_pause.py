"""Both live previews (the segment builder's and the list builder's) ask 300 ms after the last keystroke.

An answer to what the form held before that keystroke, arriving in the pause, is not shown: the count
would not be the one of the query in the form. The page's clock is Playwright's here, so the pause lasts
until the test moves it on, and the first answer is held back until the user has typed on.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import HeldPreview, admin_login

pytestmark = pytest.mark.django_db(transaction=True)

BUILDERS = {
    # page, preview URL, the field typed in, first and second text, the second's count (3 and 6 of 10 customers)
    "segment": ("conditionsegment/add/", r".*/conditionsegment/preview/$", "#id_query",
                "customer_tags CONTAINS 'vip' AND NOT customer_tags CONTAINS 'unsub'", "customer_tags CONTAINS 'vip'",
                "#segment-preview-count strong"),
    "list": ("listsegment/add/", r".*/listsegment/preview/$", "#id_expression", "vip - unsub", "vip",
             "#list-preview-count strong"),
}


@pytest.mark.parametrize("builder", BUILDERS)
def test_an_answer_for_what_the_form_held_before_the_last_keystroke_is_not_shown(
        builder, browser_page, live_server, tagged_store):
    path, preview_url, field, first, second, count = BUILDERS[builder]
    store, _people = tagged_store  # "vip" 6 customers, "vip but not unsub" 3
    page = browser_page
    admin_login(page, live_server, "hanako", "pw-for-tests")

    preview = HeldPreview(page, re.compile(preview_url), first)
    page.goto(f"{live_server.url}/admin/segments/{path}")
    preview.pause_time()
    page.select_option("#id_store", str(store.pk))
    if builder == "list":
        page.check("input[name=origin][value=expression]")
    page.fill(field, first)
    preview.ask()

    page.fill(field, second)  # its question waits for the pause to end
    preview.answer_held()  # the answer to the first text arrives in the pause
    assert page.locator(count).count() == 0  # still "checking", not 3

    page.clock.run_for(400)
    page.wait_for_function(f"document.querySelector({count!r}) !== null")
    assert page.locator(count).inner_text() == "6"
