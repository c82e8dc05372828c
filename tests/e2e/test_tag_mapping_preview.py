"""The tag mapping form previews what a pattern reads from current tags, in a real browser."""

from __future__ import annotations

import pytest

from ecpower.commerce.models import CustomerTag
from tests.e2e.conftest import SCREENSHOTS, admin_login
from tests.factories import CustomerFactory, StoreFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_preview_a_tier_mapping_before_saving(browser_page, live_server, django_user_model):
    store = StoreFactory(name="茶舗")
    for n, tier in enumerate(["Gold", "Gold", "Silver", "Bronze", None]):
        customer = CustomerFactory(store=store, email=f"t{n}@example.jp")
        if tier:
            CustomerTag.objects.create(store=store, customer=customer, name=f"AIT-Tier-{tier}")
    django_user_model.objects.create_superuser("hanako", "hanako@example.jp", "pw-for-tests")
    page = browser_page
    admin_login(page, live_server, "hanako", "pw-for-tests")
    page.goto(f"{live_server.url}/admin/integrations/tagmapping/add/")
    page.select_option("#id_store", str(store.pk))
    page.select_option("#id_kind", "regex")
    page.fill("#id_pattern", "AIT-Tier-.*")
    page.click("#mapping-preview-button")
    page.locator("#mapping-preview-errors li").wait_for()
    assert "グループ" in page.locator("#mapping-preview-errors").inner_text() or "group" in page.locator(
        "#mapping-preview-errors").inner_text()
    page.select_option("#id_kind", "prefix")
    page.fill("#id_pattern", "AIT-Tier-")
    page.click("#mapping-preview-button")
    page.locator("#mapping-preview-table tbody tr").first.wait_for()
    rows = page.locator("#mapping-preview-table tbody tr").all_inner_texts()
    assert rows[0].split("\t")[:2] == ["Gold", "2"] and len(rows) == 3
    page.screenshot(path=str(SCREENSHOTS / "tag-mapping-preview.png"), full_page=True)
