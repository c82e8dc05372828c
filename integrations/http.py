"""What every partner client shares: one pooled HTTP session, timeouts, back-off and error kinds.

Clients raise ``PartnerError`` subclasses marked ``permanent`` (retrying cannot help: bad
credentials, a frozen shop, a refused input) or not (timeouts, 5xx, rate limits once the retries
are used up), so a job can tell "try again later" from "a person must act".
"""

from __future__ import annotations

import random
import threading

import requests
from requests.adapters import HTTPAdapter

_local = threading.local()


def shared_session() -> requests.Session:
    """One keep-alive session per thread (requests sessions are not thread-safe)."""
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=16)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = "ecpower (+https://github.com/ecpower)"
        _local.session = session
    return session


def backoff_seconds(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential back-off with full jitter: 0..base*2^attempt seconds, at most ``cap``."""
    return random.uniform(0, min(cap, base * (2**attempt)))


class PartnerError(Exception):
    permanent = False

    def __init__(self, message: str, *, status: int | None = None, permanent: bool | None = None):
        super().__init__(message)
        self.status = status
        if permanent is not None:
            self.permanent = permanent


class PartnerUnavailable(PartnerError):
    """The partner kept failing (timeouts, 5xx, rate limits) after every retry."""


class PartnerAuthError(PartnerError):
    """The credentials were refused (401/403): someone must reconnect."""

    permanent = True
