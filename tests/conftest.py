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


@pytest.fixture
def staff_client(client, django_user_model, django_capture_on_commit_callbacks):
    """A logged-in superuser; queued tasks run when the request's transaction commits."""
    client.force_login(django_user_model.objects.create_superuser("hanako", "h@example.jp", "pw"))

    class Client:
        def __getattr__(self, name):
            method = getattr(client, name)

            def call(*args, **kwargs):
                with django_capture_on_commit_callbacks(execute=True):
                    return method(*args, **kwargs)

            return call

    return Client()


# The Shopify emulator on loopback and a store connected to it (tests/shopify_emulator.py).
from tests.shopify_emulator import connected_store, emulator  # noqa: E402,F401
