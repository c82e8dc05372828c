"""The segment builder in a real browser: live count while typing, located errors, save, recompute."""

from __future__ import annotations

import re

import pytest

from segments.models import ConditionSegment, SegmentStatus
from tests.e2e.conftest import SCREENSHOTS, admin_login
from tests.factories import CustomerFactory, OrderFactory, StoreFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_builder_shows_live_count_and_errors_then_saves_and_computes(browser_page, live_server, django_user_model):
    store = StoreFactory(name="茶舗", shopify_domain="tea.myshopify.com")
    repeaters = []
    for n in range(7):
        customer = CustomerFactory(store=store)
        orders = 2 if n < 3 else 1
        for _ in range(orders):
            OrderFactory(store=store, customer=customer)
        if orders == 2:
            repeaters.append(customer)
    from ecpower.commerce.services import customer_facts_refresh

    customer_facts_refresh(store=store)
    django_user_model.objects.create_superuser("hanako", "hanako@example.jp", "pw-for-tests")
    page = browser_page
    admin_login(page, live_server, "hanako", "pw-for-tests")

    page.goto(f"{live_server.url}/admin/segments/conditionsegment/add/")
    page.select_option("#id_store", str(store.pk))
    page.fill("#id_name", "リピーター")
    page.fill("#id_slug", "repeaters")

    # A broken query: the problem is shown with its line and column, no count.
    page.fill("#id_query", "number_of_orders >=")
    problems = page.locator("#segment-problems")
    problems.wait_for(state="visible")
    assert re.search(r"line 1, column \d+", problems.inner_text())

    # A valid one: the live count equals the customers with two orders.
    page.fill("#id_query", "number_of_orders >= 2")
    page.wait_for_function("document.querySelector('#segment-preview-count strong') !== null")
    assert page.locator("#segment-preview-count strong").inner_text() == "3"
    assert page.locator("#segment-sample tbody tr").count() == 3
    page.click("details.segment-json summary")
    assert '"number_of_orders"' in page.locator("#segment-tree").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "segment_builder.png"), full_page=True)

    page.click("input[name=_continue]")
    page.wait_for_url(re.compile(r".*/conditionsegment/\d+/change/.*"))
    segment = ConditionSegment.objects.get(store=store, slug="repeaters")
    assert segment.status == SegmentStatus.SUCCEEDED  # the queued recompute ran (synchronous queue in tests)
    assert segment.member_count == 3
    assert segment.versions.count() == 1
    # The change page lists the joins it recorded and the version.
    page.reload()
    assert page.locator(".segment-history .event-joined").count() == 3
    assert "number_of_orders >= 2" in page.locator(".segment-history").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "segment_detail.png"), full_page=True)

