from django.db import connection

from integrations.models import ShopifyConnection
from tests.factories import StoreFactory


def test_access_token_is_stored_encrypted_and_read_back_in_clear(db):
    link = ShopifyConnection.objects.create(store=StoreFactory(), access_token="shpat_secret_value")
    with connection.cursor() as cursor:
        cursor.execute("SELECT access_token FROM integrations_shopifyconnection WHERE id = %s", [link.pk])
        raw = cursor.fetchone()[0]
    assert "shpat_secret_value" not in raw
    link.refresh_from_db()
    assert link.access_token == "shpat_secret_value"
