"""RFM: recency, frequency and monetary scores 1–5 by store quintile, and Shopify's eleven groups.

Over the store's customers with at least one counted order (as of a day):

* R ranks customers by their last order (oldest first), F by their number of orders, M by the
  amount they spent (net of refunds). A customer's score is ``1 + floor(5 × (rank − 1) ÷ n)``
  with SQL's ``RANK()`` (ties share the lowest rank), so 5 is the top 20 % and equal values always
  get equal scores (60 % one-time buyers all get F = 1).
* FM = (F + M) ÷ 2, rounded half up. The group is read from the R × FM grid below, which uses
  the names of Shopify's ``CustomerRfmGroup``; Shopify does not publish its thresholds, so the grid
  is ours (docs/metrics.md#rfm).
* Customers without counted orders are ``PROSPECTS``.

One SQL text serves the ``rfm_group`` condition (live and as of a past day), the grid insight and
its CSV, on PostgreSQL and SQLite alike (window functions, no CTE).
"""

from __future__ import annotations

import datetime as dt

from django.db import connection
from django.utils.translation import gettext_lazy as _

from ecpower.commerce.models import Customer, Order

GROUPS = (
    "CHAMPIONS", "LOYAL", "ACTIVE", "NEW", "PROMISING", "NEEDS_ATTENTION", "AT_RISK", "ALMOST_LOST",
    "PREVIOUSLY_LOYAL", "DORMANT", "PROSPECTS",
)
GROUP_LABELS = {
    "CHAMPIONS": _("Champions"), "LOYAL": _("Loyal"), "ACTIVE": _("Active"), "NEW": _("New"),
    "PROMISING": _("Promising"), "NEEDS_ATTENTION": _("Needs attention"), "AT_RISK": _("At risk"),
    "ALMOST_LOST": _("Almost lost"), "PREVIOUSLY_LOYAL": _("Previously loyal"), "DORMANT": _("Dormant"),
    "PROSPECTS": _("Prospects (no orders)"),
}

# GRID[fm][r - 1]: rows FM 5 → 1, columns R 1 → 5 (docs/metrics.md shows it as a table).
GRID = {
    5: ("PREVIOUSLY_LOYAL", "PREVIOUSLY_LOYAL", "LOYAL", "CHAMPIONS", "CHAMPIONS"),
    4: ("PREVIOUSLY_LOYAL", "AT_RISK", "LOYAL", "LOYAL", "CHAMPIONS"),
    3: ("ALMOST_LOST", "AT_RISK", "NEEDS_ATTENTION", "ACTIVE", "ACTIVE"),
    2: ("DORMANT", "ALMOST_LOST", "NEEDS_ATTENTION", "PROMISING", "PROMISING"),
    1: ("DORMANT", "DORMANT", "ALMOST_LOST", "PROMISING", "NEW"),
}


def group_of(r: int, f: int, m: int) -> str:
    return GRID[(f + m + 1) // 2][r - 1]


def _group_case() -> str:
    whens = " ".join(
        f"WHEN r = {r} AND (f + m + 1) / 2 = {fm} THEN '{GRID[fm][r - 1]}'" for fm in GRID for r in range(1, 6)
    )
    return f"CASE {whens} END"


def stats_sql(store_id: int, cutoff: dt.datetime | None) -> tuple[str, list]:
    """Per-customer (customer_id, n, spent, last_at) of buyers: from facts now, from orders as of ``cutoff``."""
    if cutoff is None:
        return (f"SELECT id AS customer_id, orders_count AS n, amount_spent AS spent, last_order_at AS last_at "
                f"FROM {Customer._meta.db_table} WHERE store_id = %s AND orders_count > 0", [store_id])
    return (f"SELECT customer_id, COUNT(*) AS n, SUM(total - refunded_amount) AS spent, MAX(created_at) AS last_at "
            f"FROM {Order._meta.db_table} WHERE store_id = %s AND customer_id IS NOT NULL "
            f"AND ordinal IS NOT NULL AND created_at < %s GROUP BY customer_id",
            [store_id, connection.ops.adapt_datetimefield_value(cutoff)])


def scores_sql(store_id: int, cutoff: dt.datetime | None) -> tuple[str, list]:
    """SELECT customer_id, r, f, m, grp for every buyer of the store (as of ``cutoff`` when given)."""
    stats, params = stats_sql(store_id, cutoff)
    ranked = (
        "SELECT customer_id, n, spent, last_at, "
        "RANK() OVER (ORDER BY last_at) AS r_rank, RANK() OVER (ORDER BY n) AS f_rank, "
        "RANK() OVER (ORDER BY spent) AS m_rank, COUNT(*) OVER () AS total "
        f"FROM ({stats}) stats"
    )
    scored = (
        "SELECT customer_id, n, spent, last_at, 1 + (5 * (r_rank - 1)) / total AS r, "
        "1 + (5 * (f_rank - 1)) / total AS f, 1 + (5 * (m_rank - 1)) / total AS m "
        f"FROM ({ranked}) ranked"
    )
    return f"SELECT customer_id, r, f, m, {_group_case()} AS grp, n, spent, last_at FROM ({scored}) scored", params


def group_members_sql(store_id: int, group: str, cutoff: dt.datetime | None) -> tuple[str, list]:
    """SELECT customer_id of buyers in ``group`` (not PROSPECTS, which is "no orders")."""
    scores, params = scores_sql(store_id, cutoff)
    return f"SELECT customer_id FROM ({scores}) rfm WHERE grp = %s", [*params, group]
