"""Writes to the store's data that every ingest path shares.

``customer_facts_refresh`` is the one place that derives customer facts and order ordinals from
orders. It is set-based: a handful of SQL statements per call, whatever the number of customers,
written in the SQL that PostgreSQL and SQLite (3.33+) both run, but for one: on PostgreSQL a refresh
of some customers ranks their orders and aggregates their facts in one statement (``_ranks_and_facts``).
The rule it implements is documented in docs/data-model.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from django.db import connection, models, transaction
from django.utils import timezone

from ecpower.commerce.bulk import temp_table_empty
from ecpower.commerce.models import (
    Customer,
    LineItem,
    Order,
    Product,
    ProductVariant,
    Store,
)

# Customer ids per statement when a subset of a store is refreshed (bounded SQL parameters).
FACTS_CHUNK_SIZE = 2000
# Orders whose ordinal changed in one whole-store refresh above which the tables are re-analysed and vacuumed.
ANALYZE_AFTER = 50_000
# What a whole-store refresh rewrites: every order (ordinal), customer (facts) and line (copies).
WHOLE_STORE_REWRITES = (Order, Customer, LineItem)
# Indexes read whole (every customer's lines or orders, from the index alone) and rebuilt once a whole-store
# refresh rewrote at least REBUILD_SHARE of their table: each rewritten row left its old entry behind, so the
# index had doubled (at 1M customers the lines' 1.5 GB → 3.4 GB, and the recompute read the line rows instead;
# the orders' 461 MB → 1,220 MB, filled in customer order by a load in time order, then every order rewritten).
REBUILT_AFTER_REWRITE = ("line_item_customer_cover", "order_customer_cover")
REBUILD_SHARE = 0.3


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _scope(column: str, ids: Sequence[int] | None) -> tuple[str, list[int]]:
    if ids is None:
        return "", []
    return f" AND {column} IN ({', '.join(['%s'] * len(ids))})", list(ids)


def customer_scope(ids: Sequence[int], table: str = "ecp_customer_scope") -> str:
    """Put ``ids`` in a temporary table (emptied first) and return a subquery selecting them.

    An incremental recompute restricts every subquery of a rule to it (segments.services).
    """
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} (customer_id bigint PRIMARY KEY)")
        temp_table_empty(cursor, table)
        for chunk in _chunks(ids, FACTS_CHUNK_SIZE):
            cursor.execute(f"INSERT INTO {table} (customer_id) VALUES {', '.join(['(%s)'] * len(chunk))}",
                           list(chunk))
        if connection.vendor == "postgresql":
            cursor.execute(f"ANALYZE {table}")
    return f"SELECT customer_id FROM {table}"


def customers_scope(ids: Sequence[int], table: str = "ecp_customer_scope") -> list[int] | str:
    """How a scoped evaluation names these customers: on PostgreSQL the ids themselves, one array constant
    in each statement (segments.rules.InIds); elsewhere SQL selecting them from a temporary table."""
    return list(ids) if connection.vendor == "postgresql" else customer_scope(ids, table)


@transaction.atomic
def customer_facts_refresh(*, store: Store, customer_ids: Iterable[int] | None = None) -> None:
    """Recompute order ordinals and customer facts for ``customer_ids`` (default: the whole store).

    A counted order is one that is not cancelled and not a test order. Its ordinal is its rank
    among the customer's counted orders by creation time (ties broken by id); other orders have
    no ordinal. Facts are aggregates over counted orders; customers without any are reset.
    """
    if customer_ids is None:
        moved = _refresh_scope(store.pk, None)
        if connection.vendor == "postgresql" and moved >= ANALYZE_AFTER:
            # Many ordinals and facts just changed (a first import): without fresh statistics the
            # planner believes the old ones (e.g. "no order has an ordinal") and picks nested loops
            # that take minutes at a million orders (docs/performance.md).
            with connection.cursor() as cursor:
                for model in WHOLE_STORE_REWRITES:
                    cursor.execute(f"ANALYZE {model._meta.db_table}")
            # Every order, customer and line was rewritten: until a vacuum removes the old row versions
            # and marks the pages all-visible, every scan reads twice the rows and the covering line
            # index visits each line's row anyway (at 1M customers the first recompute of the 20
            # reference segments took 127 s before and 80 s after; docs/performance.md). VACUUM cannot
            # run in a transaction, so it runs once this one commits; if it fails, autovacuum gets there
            # later and the import that called this has committed all the same (robust: logged).
            transaction.on_commit(lambda: _rewritten_tables_vacuum(moved), robust=True)
        return
    ids = sorted(set(customer_ids))
    # Chunks of literal ids, not one pass over a temporary table of them: the planner sees exactly which
    # customers, and at 1M customers 10,000 of them took 1.8 s this way against 2.6–4.0 s.
    for chunk in _chunks(ids, FACTS_CHUNK_SIZE):
        _refresh_scope(store.pk, chunk)


def next_ordinals(orders: Sequence[tuple[int | None, Any, bool]],
                  known: Mapping[int, tuple[int, Any]]) -> list[int | None]:
    """For new orders given as (customer id, creation time, counts), the ordinal the facts refresh will give
    each if it comes after its customer's known orders (``known``: customer id → orders count and last order
    time, comparable with the creation times), else None: an order before the customer's last one moves every
    later rank, so that customer's later new orders get none either."""
    ordinals: list[int | None] = [None] * len(orders)
    latest = dict(known)
    unknown: set[int] = set()
    for index in sorted(range(len(orders)), key=lambda i: (orders[i][0] or 0, orders[i][1], i)):
        customer_id, created_at, counts = orders[index]
        if not customer_id or not counts:
            continue
        count, last = latest.get(customer_id, (0, None))
        if customer_id in unknown or (last is not None and created_at < last):
            unknown.add(customer_id)
            continue
        ordinals[index] = count + 1
        latest[customer_id] = (count + 1, created_at)
    return ordinals


def orders_number_provisionally(orders: Sequence[Order]) -> None:
    """Give new, unsaved counted orders the ordinal the facts refresh will give them if they come after
    their customer's known orders (every order of a live store does), so their lines can be written with
    their copies at once (``LineItem`` ``customer``, ``ordered_at``, ``ordinal``).

    Only a hint: the refresh ranks every order of the customer again and rewrites the orders (and their
    lines' copies) whose ordinal it got wrong. At 1M customers, writing 10,000 new orders' lines once
    instead of twice took 1.0–1.5 s off the incremental update (docs/performance.md).
    """
    rows = [(o.customer_id, o.created_at, o.cancelled_at is None and not o.test) for o in orders]
    known: dict[int, tuple[int, Any]] = {}
    for chunk in _chunks(sorted({customer_id for customer_id, _at, counts in rows if customer_id and counts}),
                         FACTS_CHUNK_SIZE):
        known.update((pk, (count, last)) for pk, count, last in
                     Customer.objects.filter(pk__in=chunk).values_list("pk", "orders_count", "last_order_at"))
    for order, ordinal in zip(orders, next_ordinals(rows, known), strict=True):
        if ordinal is not None:
            order.ordinal = ordinal


def line_copies_clear(*, order_ids: Sequence[int]) -> None:
    """Clear the copies of their order's customer, time and ordinal on these orders' line items.

    Every ingest path calls it for orders whose customer or creation time it changed: a scoped facts
    refresh copies order fields only to lines without copies and to orders whose ordinal changed.
    """
    for chunk in _chunks(list(order_ids), FACTS_CHUNK_SIZE):
        LineItem.objects.filter(order_id__in=chunk).update(customer=None, ordered_at=None, ordinal=None)


def _rewritten_tables_vacuum(orders_moved: int) -> None:
    """Vacuum what a whole-store refresh rewrote, then rebuild the indexes read whole if the store's rows
    are much of their table (the orders it re-ranked stand for its lines: a first build copies to all)."""
    with connection.cursor() as cursor:
        for model in WHOLE_STORE_REWRITES:
            cursor.execute(f"VACUUM {model._meta.db_table}")
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = %s", [Order._meta.db_table])
        orders = cursor.fetchone()[0]  # fresh: the vacuum just counted them
        if orders_moved >= REBUILD_SHARE * orders:
            for index in REBUILT_AFTER_REWRITE:
                # CONCURRENTLY: other stores keep writing to the table meanwhile (17 s at 14 M lines).
                cursor.execute(f"REINDEX INDEX CONCURRENTLY {index}")


def _refresh_scope(store_id: int, ids: Sequence[int] | None) -> int:
    """Returns how many orders got a new ordinal."""
    order = Order._meta.db_table
    customer = Customer._meta.db_table
    line_item = LineItem._meta.db_table
    order_scope, order_params = _scope("customer_id", ids)
    line_scope, line_params = _scope("o.customer_id", ids)

    # A scoped refresh learns which orders' ordinals changed (RETURNING) and copies order fields only to
    # their lines and to lines without copies yet; a whole-store one compares every line.
    scoped = ids is not None
    # A scoped refresh stamps its customers in the same writes as their facts (2. and 3.): an ingest touched
    # them, so tomorrow's snapshots look at them again (metrics.snapshots compares this column with the day
    # before, with the facts).
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    stamp, stamp_params = (", facts_refreshed_at = %s", [now]) if scoped else ("", [])
    with connection.cursor() as cursor:
        if scoped and connection.vendor == "postgresql":
            # 1. and 2. together, from one read of the customers' orders.
            recopy, aggregated = _ranks_and_facts(cursor, store_id, ids, stamp, stamp_params)
            moved = len(recopy)
        else:
            recopy, aggregated, moved = _ranks_then_facts(cursor, store_id, ids, stamp, stamp_params)
        # 3. Customers without counted orders are reset. A scoped refresh knows them: the customers 2. did not
        # write (usually none); they are reset and stamped in one statement, and the others are not read
        # again (asking every customer whether it still had a counted order was 0.15 s of 10,000).
        reset = f"""
            UPDATE {customer} SET
                orders_count = 0, amount_spent = 0, average_order_value = NULL,
                first_order_at = NULL, last_order_at = NULL,
                first_order_discount_code = '', first_order_source = '',
                first_order_utm_source = '', first_order_utm_medium = '', first_order_utm_campaign = ''{stamp}
            WHERE store_id = %s{{scope}}
            """
        if not scoped:
            cursor.execute(
                reset.format(scope=f""" AND (orders_count <> 0 OR first_order_at IS NOT NULL) AND NOT EXISTS (
                    SELECT 1 FROM {order} o WHERE o.customer_id = {customer}.id AND o.ordinal IS NOT NULL)"""),
                [store_id])
        else:
            rest = [pk for pk in ids if pk not in aggregated]
            if rest:
                rest_scope, rest_params = _scope("id", rest)
                cursor.execute(reset.format(scope=rest_scope), [*stamp_params, store_id, *rest_params])
        # 4. Line items carry their order's customer, time and ordinal (products_purchased reads them).
        copy = f"""
            UPDATE {line_item} AS li SET customer_id = o.customer_id, ordered_at = o.created_at, ordinal = o.ordinal
            FROM {order} AS o
            WHERE li.order_id = o.id AND o.store_id = %s{{scope}}
              AND (li.customer_id IS DISTINCT FROM o.customer_id OR li.ordered_at IS DISTINCT FROM o.created_at
                   OR li.ordinal IS DISTINCT FROM o.ordinal)
            """
        if not scoped:
            cursor.execute(copy.format(scope=""), [store_id])
        else:
            # Of the customers' orders, only those whose ordinal just changed, and lines without copies
            # (new lines, and lines of an order whose customer or creation time an ingest changed:
            # records_import clears their copies). Reading every line of every order of the customers
            # to find the few that differ was most of a refresh (docs/performance.md).
            for chunk in _chunks(recopy, FACTS_CHUNK_SIZE):
                cursor.execute(copy.format(scope=f" AND li.order_id IN ({', '.join(['%s'] * len(chunk))})"),
                               [store_id, *chunk])
            cursor.execute(copy.format(scope=f" AND li.ordered_at IS NULL{line_scope}"), [store_id, *line_params])
        # 5. Orders whose products are unknown (written by something that did not link their lines) get them
        # from their lines. Ingests write them with their orders, so this finds none in the steady state
        # (order_products_unknown holds only these orders).
        cursor.execute(
            f"UPDATE {order} AS o SET product_ids = {_order_products_sql()}"
            f" WHERE o.store_id = %s AND o.product_ids IS NULL{order_scope.replace('customer_id', 'o.customer_id')}",
            [store_id, *order_params],
        )
    return moved


def _ranks_then_facts(cursor, store_id: int, ids: Sequence[int] | None, stamp: str, stamp_params: list
                      ) -> tuple[list[int], set[int], int]:
    """Steps 1 and 2 as two statements (a whole-store refresh, and SQLite). Returns, for a refresh of some
    customers, the ids of the renumbered orders and of the customers given facts (empty for the whole store),
    and how many orders got a new ordinal."""
    order, customer = Order._meta.db_table, Customer._meta.db_table
    scoped = ids is not None
    order_scope, order_params = _scope("customer_id", ids)
    # The customers again, on the updated side: the planner then knows it updates these few customers and
    # looks them up, instead of trusting its estimate of their orders (at 1M customers it guessed 95,000
    # distinct buyers among 4.7 M orders instead of 951,000, so ten times too many rows) and hashing all.
    updated_scope, updated_params = _scope(f"{customer}.id", ids)
    recopy: list[int] = []
    aggregated: set[int] = set()
    # 1. Counted orders get their rank per customer; orders that do not count (cancelled, test, guest) lose
    # theirs. One pass over the customers' orders, carrying each order's ordinal, so only the orders whose
    # ordinal changes are joined back to be updated (at 1M customers, 2,000 customers' 11,500 orders were
    # each looked up again to find the 2,200 new ones: 80 of 160 ms; clearing in a statement of its own
    # read the orders once more, 0.2 s of a 10,000-customer refresh).
    cursor.execute(
        f"""
        UPDATE {order} AS o SET ordinal = r.rn
        FROM (SELECT id AS ranked_id, was, rn FROM ({_ranked_orders_sql(order_scope)}) AS ranked) AS r
        WHERE r.was IS DISTINCT FROM r.rn AND o.id = r.ranked_id{" RETURNING id" if scoped else ""}
        """,
        [False, store_id, *order_params],
    )
    if scoped:
        recopy = [row[0] for row in cursor.fetchall()]
        moved = len(recopy)
    else:
        moved = cursor.rowcount
    # 2. Customers with counted orders get aggregates over them and their first order's attributes.
    cursor.execute(
        f"""
        UPDATE {customer} SET {_facts_assignments("f")}{stamp}
        FROM (
            SELECT customer_id, COUNT(*) AS n, SUM(total - refunded_amount) AS spent,
                   MIN(created_at) AS first_at, MAX(created_at) AS last_at
            FROM {order}
            WHERE store_id = %s{order_scope} AND ordinal IS NOT NULL
            GROUP BY customer_id
        ) AS a
        JOIN {order} AS f ON f.customer_id = a.customer_id AND f.ordinal = 1
        WHERE {customer}.id = a.customer_id{updated_scope}{f" RETURNING {customer}.id" if scoped else ""}
        """,
        [*stamp_params, store_id, *order_params, *updated_params],
    )
    if scoped:
        aggregated = {row[0] for row in cursor.fetchall()}
    return recopy, aggregated, moved


def _ranked_orders_sql(order_scope: str, carried: str = "") -> str:
    """SELECT of the store's orders (parameters: False for ``test``, the store id, then ``order_scope``'s) with
    their ordinal as stored (``was``) and their rank among their customer's counted orders (``rn``, NULL for
    an order that does not count: cancelled, test or a guest's); ``carried`` adds ", column, …" of the order."""
    order = Order._meta.db_table
    return f"""
        SELECT id, ordinal AS was, customer_id, created_at{carried},
               CASE WHEN counts THEN ROW_NUMBER() OVER (PARTITION BY customer_id, counts
                                                         ORDER BY created_at, id) END AS rn
        FROM (
            SELECT id, ordinal, customer_id, created_at{carried},
                   customer_id IS NOT NULL AND cancelled_at IS NULL AND test = %s AS counts
            FROM {order}
            WHERE store_id = %s{order_scope}
        ) AS candidates"""


def _facts_assignments(first: str) -> str:
    """The SET list of a facts update from the aggregates ``a`` (n, spent, first_at, last_at) and the first
    counted order's attributes under the alias ``first``."""
    return (f"orders_count = a.n, amount_spent = a.spent, average_order_value = ROUND(a.spent * 1.0 / a.n, 2), "
            f"first_order_at = a.first_at, last_order_at = a.last_at, first_order_discount_code = {first}.discount_code, "
            f"first_order_source = {first}.source_name, first_order_utm_source = {first}.utm_source, "
            f"first_order_utm_medium = {first}.utm_medium, first_order_utm_campaign = {first}.utm_campaign")


def _ranks_and_facts(cursor, store_id: int, ids: Sequence[int], stamp: str, stamp_params: list
                     ) -> tuple[list[int], set[int]]:
    """Steps 1 and 2 of a scoped refresh on PostgreSQL in one statement: the customers' orders are read once
    and ranked, the orders whose ordinal changes are renumbered from the ranks, and the customers' facts
    aggregated from the same ranked rows (a counted order is one with a rank; the first is rank 1). Returns
    the ids of the renumbered orders and of the customers given facts.

    Run as two statements, the aggregate read every order again after the ranking (at 1M customers,
    2,000 customers' 11,500 orders: 110–120 ms each on a slow day, most of it visiting the order rows).
    Every part of one statement sees the orders as they were before it, so the facts come from the ranks
    just computed, never from the ordinals being replaced. SQLite has no writes in WITH: it keeps two.
    """
    order, customer = Order._meta.db_table, Customer._meta.db_table
    order_scope, order_params = _scope("customer_id", ids)
    updated_scope, updated_params = _scope(f"{customer}.id", ids)  # as in _ranks_then_facts
    cursor.execute(
        f"""
        WITH ranked AS MATERIALIZED (
            {_ranked_orders_sql(order_scope, ", total, refunded_amount, discount_code, source_name, utm_source, "
                                             "utm_medium, utm_campaign")}
        ), renumbered AS (
            UPDATE {order} AS o SET ordinal = r.rn FROM ranked AS r
            WHERE r.was IS DISTINCT FROM r.rn AND o.id = r.id
            RETURNING o.id
        ), aggregated AS (
            UPDATE {customer} SET {_facts_assignments("a")}{stamp}
            FROM (
                SELECT customer_id, COUNT(*) AS n, SUM(total - refunded_amount) AS spent,
                       MIN(created_at) AS first_at, MAX(created_at) AS last_at,
                       MAX(discount_code) FILTER (WHERE rn = 1) AS discount_code,
                       MAX(source_name) FILTER (WHERE rn = 1) AS source_name,
                       MAX(utm_source) FILTER (WHERE rn = 1) AS utm_source,
                       MAX(utm_medium) FILTER (WHERE rn = 1) AS utm_medium,
                       MAX(utm_campaign) FILTER (WHERE rn = 1) AS utm_campaign
                FROM ranked
                WHERE rn IS NOT NULL
                GROUP BY customer_id
            ) AS a
            WHERE {customer}.id = a.customer_id{updated_scope}
            RETURNING {customer}.id
        )
        SELECT id, TRUE FROM renumbered UNION ALL SELECT id, FALSE FROM aggregated
        """,
        [False, store_id, *order_params, *stamp_params, *updated_params],
    )
    recopy, aggregated = [], set()
    for pk, is_order in cursor.fetchall():
        if is_order:
            recopy.append(pk)
        else:
            aggregated.add(pk)
    return recopy, aggregated


def _order_products_sql() -> str:
    """SQL for ``Order.product_ids`` of the order ``o`` from its lines (those linked to a product)."""
    line_item = LineItem._meta.db_table
    if connection.vendor == "postgresql":
        return (f"ARRAY(SELECT DISTINCT li.product_id FROM {line_item} li"
                f" WHERE li.order_id = o.id AND li.product_id IS NOT NULL ORDER BY 1)")
    return (f"(SELECT json_group_array(DISTINCT li.product_id) FROM {line_item} li"
            f" WHERE li.order_id = o.id AND li.product_id IS NOT NULL)")


def order_products_refresh(*, order_ids: Sequence[int]) -> None:
    """Give these orders the products of their lines again (``Order.product_ids``), after their lines' links
    changed."""
    with connection.cursor() as cursor:
        for chunk in _chunks(sorted(set(order_ids)), FACTS_CHUNK_SIZE):
            cursor.execute(f"UPDATE {Order._meta.db_table} AS o SET product_ids = {_order_products_sql()}"
                           f" WHERE o.id IN ({', '.join(['%s'] * len(chunk))})", list(chunk))


class ProductMatcher:
    """Finds the product of a line item: by SKU first, then by title.

    Shopify's order export names a line item ``Product - Variant`` (or just ``Product``), and carries
    the SKU when one is set. Built once per import from the store's catalogue (a few thousand rows at
    most), then asked for each line.
    """

    def __init__(self, store: Store):
        self.by_sku = dict(ProductVariant.objects.filter(store=store).exclude(sku="").values_list("sku", "product_id"))
        products = list(Product.objects.filter(store=store).values_list("pk", "title", "product_type"))
        self.types = {pk: product_type for pk, _title, product_type in products}
        self.by_title = {title: pk for pk, title, _type in products}

    def product_of(self, sku: str, title: str) -> int | None:
        product_id = self.by_sku.get(sku) if sku else None
        if product_id is None:
            product_id = self.by_title.get(title)
        if product_id is None and " - " in title:
            product_id = self.by_title.get(title.rsplit(" - ", 1)[0])
        return product_id

    def products_of(self, lines: Iterable[tuple[str, str]]) -> list[int]:
        """The products of an order's lines given as (SKU, title): its ``Order.product_ids``."""
        return sorted({pk for sku, title in lines if (pk := self.product_of(sku, title)) is not None})

    def link(self, item: LineItem) -> bool:
        """Give ``item`` its product and the product's type; False when no product matches."""
        product_id = self.product_of(item.sku, item.title)
        if product_id is None:
            return False
        item.product_id = product_id
        item.product_type = self.types[product_id]
        return True


def line_items_link_products(*, store: Store, matcher: ProductMatcher) -> int:
    """Link the store's unlinked line items to products (``ProductMatcher``); returns how many were linked.

    Ingests link the lines they write as they write them; this is for lines written before their
    products were (an import of products after orders), so an import calls it only when it wrote
    products. Every unlinked line of the store is read, custom items that never match included. The
    orders of the lines it links get their products again (``Order.product_ids``).
    """
    to_update = [item for item in LineItem.objects.filter(store=store, product__isnull=True)
                 .only("pk", "order_id", "sku", "title").iterator(2000) if matcher.link(item)]
    LineItem.objects.bulk_update(to_update, ["product", "product_type"], batch_size=1000)
    order_products_refresh(order_ids=[item.order_id for item in to_update])
    return len(to_update)


def store_data_models() -> tuple[type[models.Model], ...]:
    """The tables of a store's customers, products and orders and of what hangs on them, children before
    their parents, so each can be emptied by one set-based delete without leaving a link dangling."""
    from django.apps import apps

    return tuple(apps.get_model(label) for label in (
        "metrics.InsightReport", "metrics.SegmentSnapshot", "metrics.SnapshotMember", "metrics.SnapshotCursor",
        "segments.MembershipEvent", "segments.Membership", "segments.ChangeBaseline", "segments.CustomerDigest",
        "integrations.TagOperation", "integrations.AppliedTag", "integrations.ChannelTalkUser",
        "commerce.CustomerTagEvent", "commerce.LineItem", "commerce.Order", "commerce.CustomerTag",
        "commerce.Customer", "commerce.ProductTag", "commerce.ProductVariant", "commerce.Product",
    ))


def _rows_delete(model: type[models.Model], lookup: str, store: Store) -> None:
    """One DELETE of the store's rows of ``model``, without the ORM's per-object collection (the caller
    deletes the children first)."""
    model._base_manager.filter(**{lookup: store})._raw_delete(connection.alias)


def store_data_delete(*, store: Store) -> None:
    """Delete every customer, product and order of a store (the store row stays), in one transaction.

    Set-based deletes, children first, instead of the ORM's per-object cascade collection,
    which does not scale to a million customers.

    Segments stay, emptied: their memberships, join/leave history and metric history go with the
    customers, and they show as not computed until the next recompute. Kept cohorts and RFM tables go too.
    """
    from django.apps import apps

    with transaction.atomic():
        for model in store_data_models():
            _rows_delete(model, "store", store)
        apps.get_model("segments", "Segment").objects.filter(store=store).update(
            status="new", member_count=0, last_joined=0, last_left=0, holdout_count=0, baseline=0,
            last_computed_for=None,
        )


def store_deletion_request(*, store: Store) -> bool:
    """Mark the store as being deleted and queue its deletion (``store_delete``) once this transaction
    commits. From now on the store is out of the daily runs, the API and incoming webhooks, and read-only in
    the admin. Asked again (a deletion stopped by an error), the job is queued again; two at once are safe
    (the second finds each table emptied by the first). True when the store was not marked before."""
    from django_q.tasks import async_task

    marked = Store.objects.filter(pk=store.pk, deletion_requested_at__isnull=True).update(
        deletion_requested_at=timezone.now(), deletion_step=0)
    store_id = store.pk
    transaction.on_commit(lambda: async_task("ecpower.commerce.tasks.store_delete_run", store_id,
                                             task_name=f"store-delete-{store_id}"))
    return bool(marked)


# Logs of a store's partners that can grow with its customers, emptied set-based before the store row goes.
_STORE_LOG_TABLES = (("integrations.WebhookAttempt", "message__store"), ("integrations.WebhookMessage", "store"),
                     ("integrations.WebhookDelivery", "store"))


def store_deletion_steps() -> int:
    """How many steps ``store_delete`` reports: one per bulky table, then the store row with the rest."""
    return len(store_data_models()) + len(_STORE_LOG_TABLES) + 1


def store_delete(*, store: Store) -> None:
    """Delete a store and everything of it.

    Its customers, orders, products and partner logs go set-based, a table per transaction, so a store of a
    million customers is not one transaction of tens of millions of rows, and the store row shows the steps
    done (``deletion_step``). Then the store row goes with what is left (segments, connections, jobs, daily
    runs, keys, members), which the ORM's cascade collects: few rows at any store size. Stopped half-way,
    a second run starts over and finishes (every step deletes whatever of the store is still there).
    """
    from django.apps import apps

    tables = [(model, "store") for model in store_data_models()]
    tables += [(apps.get_model(label), lookup) for label, lookup in _STORE_LOG_TABLES]
    for done, (model, lookup) in enumerate(tables, start=1):
        with transaction.atomic():
            _rows_delete(model, lookup, store)
        Store.objects.filter(pk=store.pk).update(deletion_step=done)
    with transaction.atomic():
        store.delete()
