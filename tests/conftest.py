from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def shopify_csv_dir() -> Path:
    return FIXTURES / "shopify_csv"


@pytest.fixture
def store(db):
    from tests.factories import StoreFactory

    return StoreFactory(shopify_domain="tea.myshopify.com", name="茶舗")
