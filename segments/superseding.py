"""A builder's preview that a newer one from the same page replaces is cancelled in the database.

The segment builder asks for a preview as its user types, and on a large store the exact count of a
rule over line items keeps a core busy for seconds (docs/performance.md). The page stops waiting for
a count once the rule changes, but the server used to run it to its end all the same, so counts of
rules nobody looked at any more piled up on the database ("a wrong count cannot be cancelled" is a
complaint about Mautic in our product notes).

Each preview's statements now carry a comment naming the page that asked for it
(``/* ecpower preview <key> */``, which PostgreSQL shows in ``pg_stat_activity``), and a new preview
with the same key first cancels the statements still running under it (``pg_cancel_backend``, which
our own database role may send to its own connections). The cancelled request answers
``PreviewSuperseded``. Only on PostgreSQL; elsewhere previews simply run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import OperationalError, connection

PAGE_TOKEN = re.compile(r"[0-9a-z-]{1,40}")  # no LIKE wildcards, nothing to escape in a comment
QUERY_CANCELED = "57014"


class PreviewSuperseded(Exception):
    """A newer preview from the same page cancelled this one."""


def preview_key(user_id: int, page_token: str) -> str | None:
    """The key of one builder page of one user, or None when the page sent no usable token."""
    if not PAGE_TOKEN.fullmatch(page_token or ""):
        return None
    return f"{user_id}-{page_token}"


def _marker(key: str) -> str:
    return f"/* ecpower preview {key} */"


@contextmanager
def superseding(key: str | None) -> Iterator[None]:
    """Cancel what an earlier preview under ``key`` still runs, then mark this one's statements with it.

    Raises ``PreviewSuperseded`` when a later preview under the same key cancels one of them.
    """
    if key is None or connection.vendor != "postgresql":
        yield
        return
    marker = _marker(key)
    with connection.cursor() as cursor:
        # Within a transaction PostgreSQL shows the activity it saw first; look afresh.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            """SELECT pg_cancel_backend(pid) FROM pg_stat_activity
               WHERE pid <> pg_backend_pid() AND datname = current_database() AND state = 'active'
                 AND query LIKE %s""",
            [f"{marker}%"],
        )

    def marked(execute, sql, params, many, context):
        return execute(f"{marker} {sql}", params, many, context)

    try:
        with connection.execute_wrapper(marked):
            yield
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == QUERY_CANCELED:
            raise PreviewSuperseded(key) from exc
        raise
