from django.db import connection

from tests.factories import StoreFactory


def test_access_token_is_stored_encrypted_and_read_back_in_clear(db):
    store = StoreFactory(shopify_access_token="shpat_secret_value")
    with connection.cursor() as cursor:
        cursor.execute("SELECT shopify_access_token FROM commerce_store WHERE id = %s", [store.pk])
        raw = cursor.fetchone()[0]
    assert "shpat_secret_value" not in raw
    store.refresh_from_db()
    assert store.shopify_access_token == "shpat_secret_value"
