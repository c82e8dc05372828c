"""Channel Talk Open API v5, the two calls we need: read a user by memberId, upsert one.

Auth is the ``x-access-key`` / ``x-access-secret`` header pair. ``tags`` in an upsert replaces the
user's whole tag list, so callers read, merge and write (``integrations.channeltalk.push``).
A 429 is waited out until ``x-ratelimit-reset`` (epoch seconds); timeouts and 5xx are retried
with back-off; 401/403 raise ``PartnerAuthError`` (permanent).
"""

from __future__ import annotations

import time
from urllib.parse import quote

import requests

from integrations.http import PartnerAuthError, PartnerError, PartnerUnavailable, backoff_seconds, shared_session

DEFAULT_BASE_URL = "https://api.channel.io"
MAX_RATE_WAIT = 60.0


class ChannelTalkClient:
    def __init__(self, access_key: str, access_secret: str, *, base_url: str = DEFAULT_BASE_URL,
                 timeout: tuple[float, float] = (5.0, 30.0), max_retries: int = 5, sleep=time.sleep):
        self.base_url = base_url.rstrip("/")
        self.headers = {"x-access-key": access_key, "x-access-secret": access_secret,
                        "Content-Type": "application/json"}
        self.timeout = timeout
        self.max_retries = max_retries
        self.sleep = sleep
        self.calls = 0

    def _request(self, method: str, path: str, json: dict | None = None) -> requests.Response | None:
        url = f"{self.base_url}/open/v5{path}"
        for attempt in range(self.max_retries + 1):
            self.calls += 1
            try:
                response = shared_session().request(method, url, json=json, headers=self.headers,
                                                    timeout=self.timeout)
            except requests.RequestException as exc:
                if attempt == self.max_retries:
                    raise PartnerUnavailable(f"Channel Talk did not answer: {exc}") from exc
                self.sleep(backoff_seconds(attempt))
                continue
            if response.status_code in (401, 403):
                raise PartnerAuthError(f"Channel Talk refused the API key ({response.status_code}).",
                                       status=response.status_code)
            if response.status_code == 404:
                return None
            if response.status_code == 429:
                reset = response.headers.get("x-ratelimit-reset")
                wait = max(0.0, float(reset) - time.time()) if reset else backoff_seconds(attempt)
                if attempt == self.max_retries:
                    raise PartnerUnavailable("Channel Talk kept answering 429 (rate limited).", status=429)
                self.sleep(min(MAX_RATE_WAIT, wait + 0.05))
                continue
            if response.status_code >= 500:
                if attempt == self.max_retries:
                    raise PartnerUnavailable(f"Channel Talk answered {response.status_code}.",
                                             status=response.status_code)
                self.sleep(backoff_seconds(attempt))
                continue
            if response.status_code >= 400:
                raise PartnerError(f"Channel Talk refused the request ({response.status_code}): "
                                   f"{response.text[:300]}", status=response.status_code, permanent=True)
            return response
        raise PartnerUnavailable("Channel Talk did not answer.")  # pragma: no cover (the loop returns or raises)

    def user_by_member_id(self, member_id: str) -> dict | None:
        response = self._request("GET", f"/users/@{quote(str(member_id), safe='')}")
        return response.json().get("user") if response is not None else None

    def upsert_user(self, member_id: str, *, profile: dict, tags: list[str]) -> dict:
        response = self._request("PUT", f"/users/@{quote(str(member_id), safe='')}",
                                 json={"profile": profile, "tags": tags})
        return response.json().get("user", {}) if response is not None else {}
