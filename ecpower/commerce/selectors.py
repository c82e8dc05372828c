"""Reads of store data the admin needs beyond its own querysets."""

from __future__ import annotations

from django.db import connection

from ecpower.commerce.models import Customer


def customer_places(store_ids: list[int]) -> list[tuple[str, str]]:
    """The distinct (country code, province code) pairs of the customers of ``store_ids``, sorted.

    On PostgreSQL the ``customer_store_place`` index is walked from one pair to the next, per store (a loose
    index scan: one probe per pair), instead of a DISTINCT over every customer, which read the million rows of
    a large store on each view of the customer list (0.66 s for the countries, 0.76 s for the provinces).
    """
    if not store_ids:
        return []
    if connection.vendor != "postgresql":
        return list(Customer.objects.filter(store_id__in=store_ids).order_by("country_code", "province_code")
                    .values_list("country_code", "province_code").distinct())
    table = Customer._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""WITH RECURSIVE places (store_id, country_code, province_code) AS (
                    SELECT stores.id, first.country_code, first.province_code
                    FROM unnest(%s::bigint[]) AS stores (id), LATERAL (
                        SELECT country_code, province_code FROM {table} WHERE store_id = stores.id
                        ORDER BY country_code, province_code LIMIT 1) AS first
                    UNION ALL
                    SELECT place.store_id, next.country_code, next.province_code
                    FROM places AS place, LATERAL (
                        SELECT country_code, province_code FROM {table}
                        WHERE store_id = place.store_id
                          AND (country_code, province_code) > (place.country_code, place.province_code)
                        ORDER BY country_code, province_code LIMIT 1) AS next
                )
                SELECT DISTINCT country_code, province_code FROM places ORDER BY 1, 2""",
            [list(store_ids)])
        return cursor.fetchall()
