"""A small Shopify Admin GraphQL client (docs/shopify.md; facts in shared/reference/integrations.md).

* Cost-aware: every response's ``extensions.cost.throttleStatus`` updates a model of the shop's
  bucket; a query whose last cost is above what is available waits first. THROTTLED arrives as
  HTTP 200 and is waited out and retried; MAX_COST_EXCEEDED raises ``MaxCostExceeded`` so
  ``paginate`` can halve its page size.
* Retries with back-off on timeouts, connection errors, 429 and 5xx; 401/403 raise
  ``PartnerAuthError`` and 402/423 ``ShopUnavailable`` (both permanent).
* ``userErrors`` raise ``UserErrors``; top-level GraphQL errors raise ``GraphQLError``.
* A response answered by another API version than the one asked for is logged once per client.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import requests
from django.conf import settings

from integrations.http import PartnerAuthError, PartnerError, PartnerUnavailable, backoff_seconds, shared_session

logger = logging.getLogger(__name__)

MAX_PAGE = 250


class ShopUnavailable(PartnerError):
    """The shop cannot be used (402 frozen / payment required, 423 locked)."""

    permanent = True


class GraphQLError(PartnerError):
    permanent = True

    def __init__(self, errors: list[dict], *, code: str = ""):
        self.errors = errors
        self.code = code or (((errors[0].get("extensions") or {}).get("code") or "") if errors else "")
        super().__init__("; ".join(str(e.get("message", e)) for e in errors) or "GraphQL error")


class MaxCostExceeded(GraphQLError):
    """One query asked for more than the 1000-point single-query limit."""


class UserErrors(PartnerError):
    permanent = True

    def __init__(self, field_name: str, errors: list[dict]):
        self.field_name = field_name
        self.errors = errors
        super().__init__(f"{field_name}: " + "; ".join(e.get("message", "") for e in errors))


@dataclass
class ThrottleStatus:
    maximum: float
    available: float
    restore_rate: float
    seen_at: float

    def available_now(self, now: float) -> float:
        return min(self.maximum, self.available + (now - self.seen_at) * self.restore_rate)


def gid(kind: str, numeric_id: int | str) -> str:
    return f"gid://shopify/{kind}/{numeric_id}"


def gid_id(value: str | None) -> int | None:
    """``gid://shopify/Customer/123`` → 123 (None stays None)."""
    if not value:
        return None
    return int(str(value).rsplit("/", 1)[-1].split("?", 1)[0])


class ShopifyClient:
    def __init__(
        self,
        shop: str,
        access_token: str,
        *,
        api_version: str | None = None,
        admin_url: str | None = None,
        session: requests.Session | None = None,
        timeout: tuple[float, float] | None = None,
        max_retries: int = 5,
        max_throttle_waits: int = 50,
        sleep: Callable[[float], None] = time.sleep,
        on_version: Callable[[str], None] | None = None,
    ):
        self.shop = shop
        self.api_version = api_version or settings.SHOPIFY_API_VERSION
        base = (admin_url or settings.SHOPIFY_ADMIN_URL).format(shop=shop).rstrip("/")
        self.base_url = base
        self.endpoint = f"{base}/admin/api/{self.api_version}/graphql.json"
        self.session = session or shared_session()
        self.timeout = timeout or settings.SHOPIFY_TIMEOUT
        self.max_retries = max_retries
        self.max_throttle_waits = max_throttle_waits
        self.sleep = sleep
        self.on_version = on_version
        self.answered_version = ""
        self.throttle: ThrottleStatus | None = None
        self._last_cost: dict[str, float] = {}
        self._token = access_token
        self.calls = 0

    # --- transport -------------------------------------------------------------------------

    def _post(self, payload: dict) -> requests.Response:
        headers = {"X-Shopify-Access-Token": self._token, "Content-Type": "application/json"}
        attempt = 0
        while True:
            try:
                response = self.session.post(self.endpoint, data=json.dumps(payload), headers=headers,
                                             timeout=self.timeout)
            except (requests.Timeout, requests.ConnectionError) as exc:
                if attempt >= self.max_retries:
                    raise PartnerUnavailable(f"Shopify did not answer: {exc}") from exc
                self.sleep(backoff_seconds(attempt))
                attempt += 1
                continue
            self.calls += 1
            status = response.status_code
            if status in (401, 403):
                raise PartnerAuthError(_error_text(response) or "Access token refused", status=status)
            if status in (402, 423):
                raise ShopUnavailable(_error_text(response) or "Shop unavailable", status=status)
            if status == 429 or status >= 500:
                if attempt >= self.max_retries:
                    raise PartnerUnavailable(f"Shopify answered HTTP {status} {attempt + 1} times", status=status)
                retry_after = _float(response.headers.get("Retry-After"))
                self.sleep(retry_after if retry_after is not None else backoff_seconds(attempt))
                attempt += 1
                continue
            if status >= 400:
                raise PartnerError(f"Shopify answered HTTP {status}: {_error_text(response)}", status=status,
                                   permanent=True)
            self._note_version(response.headers.get("X-Shopify-API-Version", ""))
            return response

    def _note_version(self, version: str) -> None:
        if not version or version == self.answered_version:
            return
        self.answered_version = version
        if version != self.api_version:
            logger.warning("Shopify answered %s with API version %s instead of %s (retired?)",
                           self.shop, version, self.api_version)
        if self.on_version:
            self.on_version(version)

    # --- GraphQL ---------------------------------------------------------------------------

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        """Run one query or mutation; returns ``data``. Waits out throttling."""
        payload = {"query": query, "variables": variables or {}}
        for _wait in range(self.max_throttle_waits + 1):
            self._wait_for_budget(self._last_cost.get(query, 0))
            try:
                body = self._post(payload).json()
            except ValueError as exc:
                raise PartnerUnavailable(f"Shopify answered with something that is not JSON: {exc}") from exc
            cost = (body.get("extensions") or {}).get("cost") or {}
            self._note_cost(query, cost)
            errors = body.get("errors")
            if not errors:
                return body.get("data") or {}
            if isinstance(errors, str):
                raise GraphQLError([{"message": errors}])
            codes = {((e.get("extensions") or {}).get("code") or "") for e in errors}
            if "THROTTLED" in codes:
                requested = float(cost.get("requestedQueryCost") or self._last_cost.get(query) or 50)
                self.sleep(self._seconds_until(requested))
                continue
            if "MAX_COST_EXCEEDED" in codes:
                raise MaxCostExceeded(errors, code="MAX_COST_EXCEEDED")
            raise GraphQLError(errors)
        raise PartnerUnavailable(f"Still throttled after {self.max_throttle_waits} waits")

    def _note_cost(self, query: str, cost: dict) -> None:
        status = cost.get("throttleStatus")
        if status:
            self.throttle = ThrottleStatus(
                maximum=float(status["maximumAvailable"]),
                available=float(status["currentlyAvailable"]),
                restore_rate=float(status["restoreRate"]),
                seen_at=time.monotonic(),
            )
        spent = cost.get("actualQueryCost") or cost.get("requestedQueryCost")
        if spent:
            self._last_cost[query] = float(cost.get("requestedQueryCost") or spent)

    def _seconds_until(self, needed: float) -> float:
        if not self.throttle:
            return 1.0
        missing = needed - self.throttle.available_now(time.monotonic())
        return max(0.0, missing / self.throttle.restore_rate) if self.throttle.restore_rate else 1.0

    def _wait_for_budget(self, needed: float) -> None:
        if needed and self.throttle:
            seconds = self._seconds_until(needed)
            if seconds > 0:
                self.sleep(seconds)

    def mutate(self, query: str, variables: dict | None, field_name: str) -> dict:
        """Run a mutation and return its payload; ``userErrors`` raise ``UserErrors``."""
        payload = self.graphql(query, variables).get(field_name) or {}
        if payload.get("userErrors"):
            raise UserErrors(field_name, payload["userErrors"])
        return payload

    def paginate(self, query: str, variables: dict, path: str, *, page_size: int = MAX_PAGE) -> Iterator[dict]:
        """Yield the nodes of the connection at ``path`` (e.g. "customers"), page after page.

        The query takes ``$first`` and ``$after``; on MAX_COST_EXCEEDED the page size is halved.
        """
        after = None
        size = min(page_size, MAX_PAGE)
        while True:
            try:
                data = self.graphql(query, {**variables, "first": size, "after": after})
            except MaxCostExceeded:
                if size == 1:
                    raise
                size = max(1, size // 2)
                continue
            connection = data
            for key in path.split("."):
                connection = connection[key]
            yield from connection.get("nodes") or [edge["node"] for edge in connection.get("edges", [])]
            page = connection["pageInfo"]
            if not page["hasNextPage"]:
                return
            after = page["endCursor"]

    # --- bulk operations -------------------------------------------------------------------

    def bulk_query(self, query: str) -> str:
        payload = self.mutate(BULK_QUERY_RUN, {"query": query}, "bulkOperationRunQuery")
        return payload["bulkOperation"]["id"]

    def bulk_operation(self, operation_id: str) -> dict:
        return self.graphql(BULK_OPERATION, {"id": operation_id})["node"]

    def bulk_wait(self, operation_id: str, *, poll_seconds: float | None = None,
                  on_progress: Callable[[dict], None] | None = None) -> dict:
        """Poll until the operation ends; returns it (status COMPLETED, FAILED, CANCELED or EXPIRED)."""
        poll = settings.SHOPIFY_BULK_POLL_SECONDS if poll_seconds is None else poll_seconds
        while True:
            operation = self.bulk_operation(operation_id)
            if on_progress:
                on_progress(operation)
            if operation["status"] not in ("CREATED", "RUNNING", "CANCELING"):
                return operation
            self.sleep(poll)

    def download_lines(self, url: str | None) -> Iterator[dict]:
        """Read a bulk result file (JSONL), one object per line. No URL means an empty result."""
        if not url:
            return
        for attempt in range(self.max_retries + 1):
            try:
                response = self.session.get(url, timeout=self.timeout, stream=True)
                if response.status_code >= 500:
                    raise requests.ConnectionError(f"HTTP {response.status_code}")
                response.raise_for_status()
                break
            except (requests.Timeout, requests.ConnectionError) as exc:
                if attempt >= self.max_retries:
                    raise PartnerUnavailable(f"Could not download the bulk result: {exc}") from exc
                self.sleep(backoff_seconds(attempt))
        for line in response.iter_lines():
            if line:
                yield json.loads(line)

    def staged_upload(self, filename: str, content: bytes) -> str:
        """Upload a JSONL variables file for a bulk mutation; returns the staged upload path (key)."""
        payload = self.mutate(STAGED_UPLOADS_CREATE, {"input": [{
            "resource": "BULK_MUTATION_VARIABLES", "filename": filename, "mimeType": "text/jsonl",
            "httpMethod": "POST"}]}, "stagedUploadsCreate")
        target = payload["stagedTargets"][0]
        fields = [(p["name"], p["value"]) for p in target["parameters"]]
        key = dict(fields)["key"]
        for attempt in range(self.max_retries + 1):
            try:
                response = self.session.post(target["url"], data=fields,
                                             files={"file": (filename, content, "text/jsonl")},
                                             timeout=self.timeout)
                if response.status_code < 500:
                    break
            except (requests.Timeout, requests.ConnectionError):
                pass
            if attempt >= self.max_retries:
                raise PartnerUnavailable("The staged upload kept failing")
            self.sleep(backoff_seconds(attempt))
        if response.status_code not in (200, 201, 204):
            raise PartnerError(f"The staged upload was refused: HTTP {response.status_code}", permanent=True)
        return key

    def bulk_mutation(self, mutation: str, staged_path: str, client_identifier: str = "") -> str:
        payload = self.mutate(BULK_MUTATION_RUN, {"mutation": mutation, "path": staged_path,
                                                  "client": client_identifier or None},
                              "bulkOperationRunMutation")
        return payload["bulkOperation"]["id"]

    # --- tags and segments -----------------------------------------------------------------

    def tags_change(self, action: str, changes: list[tuple[int, list[str]]]) -> dict[int, str]:
        """``tagsAdd`` (action "add") or ``tagsRemove`` for several customers in one request.

        ``changes`` is [(shopify customer id, tags)]; returns {customer id: error} for refused ones.
        """
        field_name = "tagsAdd" if action == "add" else "tagsRemove"
        parts, variables, declarations = [], {}, []
        for index, (customer_id, tags) in enumerate(changes):
            declarations.append(f"$id{index}: ID!, $tags{index}: [String!]!")
            parts.append(f"c{index}: {field_name}(id: $id{index}, tags: $tags{index}) "
                         "{ node { id } userErrors { field message } }")
            variables[f"id{index}"] = gid("Customer", customer_id)
            variables[f"tags{index}"] = tags
        query = f"mutation TagsChange({', '.join(declarations)}) {{ {' '.join(parts)} }}"
        data = self.graphql(query, variables)
        failures = {}
        for index, (customer_id, _tags) in enumerate(changes):
            result = data.get(f"c{index}") or {}
            if result.get("userErrors"):
                failures[customer_id] = "; ".join(e["message"] for e in result["userErrors"])
            elif not result.get("node"):
                failures[customer_id] = "Customer not found"
        return failures

    def segment_create(self, name: str, query: str) -> dict:
        return self.mutate(SEGMENT_CREATE, {"name": name, "query": query}, "segmentCreate")["segment"]

    def shop_info(self) -> dict:
        return self.graphql("query Shop { shop { id name myshopifyDomain ianaTimezone currencyCode } }")["shop"]


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    errors = body.get("errors") if isinstance(body, dict) else None
    return errors if isinstance(errors, str) else json.dumps(errors or body)[:200]


BULK_QUERY_RUN = """
mutation BulkQuery($query: String!) {
  bulkOperationRunQuery(query: $query, groupObjects: false) {
    bulkOperation { id status }
    userErrors { field message }
  }
}"""

BULK_MUTATION_RUN = """
mutation BulkMutation($mutation: String!, $path: String!, $client: String) {
  bulkOperationRunMutation(mutation: $mutation, stagedUploadPath: $path, clientIdentifier: $client) {
    bulkOperation { id status }
    userErrors { field message }
  }
}"""

BULK_OPERATION = """
query BulkOperation($id: ID!) {
  node(id: $id) {
    ... on BulkOperation { id status errorCode objectCount rootObjectCount url partialDataUrl type }
  }
}"""

STAGED_UPLOADS_CREATE = """
mutation Staged($input: [StagedUploadInput!]!) {
  stagedUploadsCreate(input: $input) {
    stagedTargets { url resourceUrl parameters { name value } }
    userErrors { field message }
  }
}"""

SEGMENT_CREATE = """
mutation SegmentCreate($name: String!, $query: String!) {
  segmentCreate(name: $name, query: $query) {
    segment { id name query }
    userErrors { field message }
  }
}"""
