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



@pytest.fixture
def large_store(settings, django_user_model):
    """A store "larger" than the estimate threshold: 48 customers, 12 of them with two orders this month."""
    import datetime as dt

    from ecpower.commerce.services import customer_facts_refresh

    settings.PREVIEW_ESTIMATE_ABOVE = 10
    settings.PREVIEW_ESTIMATE_SAMPLE = 12
    store = StoreFactory(name="大きな茶舗", shopify_domain="big-tea.myshopify.com")
    noon = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    for n in range(48):
        customer = CustomerFactory(store=store)
        if n % 4 == 0:
            OrderFactory.create_batch(2, store=store, customer=customer, created_at=noon)
    customer_facts_refresh(store=store)
    django_user_model.objects.create_superuser("hanako", "hanako@example.jp", "pw-for-tests")
    return store


def test_builder_shows_an_estimate_on_a_large_store_then_the_exact_count(browser_page, live_server, large_store):
    """A rule over orders on a store "larger" than the threshold: ≈ count ± margin first, then the count."""
    store = large_store
    page = browser_page
    admin_login(page, live_server, "hanako", "pw-for-tests")

    held = []  # the request for the exact count waits until the estimate has been looked at

    def hold_exact(route, request):
        if "exact=1" in (request.post_data or "") or 'name="exact"' in (request.post_data or ""):
            held.append(route)
        else:
            route.continue_()

    page.route(re.compile(r".*/conditionsegment/preview/$"), hold_exact)
    page.goto(f"{live_server.url}/admin/segments/conditionsegment/add/")
    page.select_option("#id_store", str(store.pk))
    page.fill("#id_query", "orders_placed MATCHES (date > -30d, count >= 2)")
    page.wait_for_function("document.querySelector('#segment-preview-count[data-estimated] strong') !== null")
    estimate = page.locator("#segment-preview-count").inner_text()
    assert re.match(r"≈ \d+ ± \d+", estimate), estimate
    assert re.search(r"12 (人の標本|customers)", estimate), estimate  # the sample's size is named
    page.screenshot(path=str(SCREENSHOTS / "segment_builder_estimate.png"), full_page=True)

    for _ in range(100):  # the page asked for the exact count right after showing the estimate
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    held[0].continue_()
    page.wait_for_function("document.querySelector('#segment-preview-count:not([data-estimated]) strong') !== null")
    assert page.locator("#segment-preview-count strong").inner_text() == "12"


def test_a_count_still_running_when_the_query_changes_is_dropped_and_the_new_one_shown(
        browser_page, live_server, large_store):
    """The exact count of the first query is held; the user types another query meanwhile. The page shows
    the new query's count, never the old one's, and names itself the same way in both requests, which is
    what lets the server cancel the old count (tests/segments/test_preview_superseded.py)."""
    store = large_store
    page = browser_page
    admin_login(page, live_server, "hanako", "pw-for-tests")

    held, pages = [], []

    def hold_exact(route, request):
        body = request.post_data or ""
        pages.extend(re.findall(r'name="page"\r\n\r\n([0-9a-z-]+)', body))
        if 'name="exact"' in body:
            held.append(route)
        else:
            route.continue_()

    page.route(re.compile(r".*/conditionsegment/preview/$"), hold_exact)
    dropped = []
    page.on("requestfailed", lambda request: dropped.append((request.post_data or "", request.failure)))
    page.goto(f"{live_server.url}/admin/segments/conditionsegment/add/")
    page.select_option("#id_store", str(store.pk))
    page.fill("#id_query", "orders_placed MATCHES (date > -30d, count >= 2)")
    page.wait_for_function("document.querySelector('#segment-preview-count[data-estimated] strong') !== null")
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1  # the exact count of the first query, not answered yet

    page.fill("#id_query", "number_of_orders = 0")  # customer facts: counted exactly at once
    page.wait_for_function("document.querySelector('#segment-preview-count strong')?.textContent === '36'")
    held[0].continue_()  # the old count's answer would arrive now
    page.wait_for_timeout(500)
    assert page.locator("#segment-preview-count strong").inner_text() == "36"
    # The page stopped waiting for the old count: its request was aborted.
    assert [("count >= 2" in body, "ABORTED" in str(failure)) for body, failure in dropped] == [(True, True)]
    assert len(pages) >= 3 and len(set(pages)) == 1  # one page, one name in every request
    page.screenshot(path=str(SCREENSHOTS / "segment_builder_superseded.png"), full_page=True)
