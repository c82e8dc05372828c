"""Real headless Chromium (Debian's package) driven by Playwright against pytest-django's live server."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from django.db import connections

CHROMIUM = os.environ.get("ECPOWER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
SCREENSHOTS = Path(os.environ.get("ECPOWER_SCREENSHOTS", Path(__file__).parent / "screenshots"))


@pytest.fixture
def browser_page(monkeypatch):
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        if os.environ.get("ECPOWER_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); CI requires it")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls made by the test
    # itself (fixtures, assertions) are ordinary synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, locale="ja-JP")
        page.set_default_timeout(15_000)
        yield page
        browser.close()
        # ORM calls made while Playwright's loop runs get their own connection (asgiref keys
        # connections by context); close it, or PostgreSQL refuses to drop the test database.
        connections.close_all()


@pytest.fixture
def tagged_store(django_user_model):
    """Ten customers: 0–5 tagged vip, the even ones unsub; a segment of each tag; an admin, hanako."""
    from segments.services import segment_create, segment_recompute
    from tests.factories import CustomerFactory, StoreFactory

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


def admin_login(page, live_server, username: str, password: str) -> None:
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")


class HeldPreview:
    """A live preview whose timing the test holds: the page's clock is Playwright's, so the pause after a
    keystroke lasts until the test moves it on, and the first request carrying ``marker`` waits until the
    test lets its answer through."""

    START = dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)

    def __init__(self, page, url_pattern, marker: str):
        self.page, self.marker, self.held = page, marker, []
        page.clock.install(time=self.START)
        page.route(url_pattern, self._route)

    def _route(self, route, request):
        if self.marker in (request.post_data or "") and not self.held:
            self.held.append(route)
        else:
            route.continue_()

    def pause_time(self) -> None:
        """After the page has loaded: from here on, its time moves only when the test says."""
        self.page.clock.pause_at(self.START + dt.timedelta(hours=1))

    def ask(self) -> None:
        """End the pause after the last keystroke, and wait until the question with the marker is held."""
        self.page.clock.run_for(400)
        for _ in range(100):
            if self.held:
                return
            self.page.wait_for_timeout(50)
        raise AssertionError(f"the page did not ask about {self.marker!r}")

    def answer_held(self) -> None:
        """Let the held answer arrive, and give the page (real) time to read it."""
        with self.page.expect_response(lambda response: self.marker in (response.request.post_data or "")):
            self.held[0].continue_()
        self.page.wait_for_timeout(300)
