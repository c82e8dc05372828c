"""The emulator's HTTP side: a real server on loopback, and a webhook sender.

Routes (``{shop}`` is the myshopify domain, so SHOPIFY_ADMIN_URL=http://127.0.0.1:PORT/{shop}):

* ``POST /{shop}/admin/api/{version}/graphql.json``: the Admin API (``X-Shopify-Access-Token``)
* ``GET  /{shop}/admin/oauth/authorize``: approves at once and redirects back with a code
* ``POST /{shop}/admin/oauth/access_token``: code or refresh token → access token
* ``POST /_files/staged``: staged uploads (multipart, as Google Cloud Storage takes them)
* ``GET  /_files/bulk/{id}.jsonl``: bulk operation results
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

import requests
from graphql import GraphQLError

from integrations.shopify.emulator.schema import (
    MAX_SINGLE_QUERY_COST,
    Context,
    execute_document,
    parse_and_validate,
    query_cost,
)
from integrations.shopify.emulator.state import Shop, World, iso, now

logger = logging.getLogger(__name__)
VERSION = re.compile(r"^(\d{4}-\d{2}|unstable)$")


class EmulatorServer:
    """Runs the emulator in a background thread: ``with EmulatorServer() as server: server.url``."""

    def __init__(self, world: World | None = None, host: str = "127.0.0.1", port: int = 0):
        self.world = world or World()
        handler = type("Handler", (_Handler,), {"world": self.world})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        handler.base_url = f"http://{host}:{self.httpd.server_address[1]}"
        self.url = handler.base_url
        self.thread: threading.Thread | None = None

    def admin_url(self) -> str:
        return self.url + "/{shop}"

    def start(self) -> EmulatorServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="shopify-emulator", daemon=True)
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    world: World
    base_url: str
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        logger.debug("emulator: " + format, *args)

    # --- plumbing --------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body, headers: dict | None = None, content_type="application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = urlparse(self.path)
        match = re.fullmatch(r"/_files/bulk/(\d+)\.jsonl", path.path)
        if match:
            return self._bulk_file(int(match.group(1)))
        match = re.fullmatch(r"/([^/]+)/admin/oauth/authorize", path.path)
        if match:
            return self._authorize(match.group(1), parse_qs(path.query))
        self._send(404, {"errors": "Not Found"})

    def do_POST(self):
        path = urlparse(self.path).path
        match = re.fullmatch(r"/([^/]+)/admin/api/([^/]+)/graphql\.json", path)
        if match:
            return self._graphql(match.group(1), match.group(2))
        match = re.fullmatch(r"/([^/]+)/admin/oauth/access_token", path)
        if match:
            return self._access_token(match.group(1))
        if path == "/_files/staged":
            return self._staged_upload()
        self._send(404, {"errors": "Not Found"})

    # --- Admin API -------------------------------------------------------------------------

    def _graphql(self, domain: str, version: str) -> None:
        body = self._body()
        world = self.world
        shop = world.shop(domain)
        if shop is None:
            return self._send(404, {"errors": "Not Found"})
        if self.headers.get("X-Shopify-Access-Token") not in shop.access_tokens:
            return self._send(401, {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"})
        if not VERSION.match(version):
            return self._send(404, {"errors": "Not Found"})
        answered = version if version == "unstable" or version >= world.oldest_supported else world.oldest_supported
        headers = {"X-Shopify-API-Version": answered}
        with world.lock:
            shop.calls += 1
            if shop.faults.roll(shop.faults.http_error_rate):
                status = shop.faults.rng.choice([500, 502, 503])
                return self._send(status, {"errors": "Internal Server Error"}, headers)
            try:
                request = json.loads(body or b"{}")
                document = parse_and_validate(request.get("query") or "")
            except (ValueError, GraphQLError) as exc:
                message = exc.message if isinstance(exc, GraphQLError) else str(exc)
                return self._send(200, {"errors": [{"message": message}]}, headers)
            variables = request.get("variables") or {}
            cost = query_cost(document, variables)
            if cost > MAX_SINGLE_QUERY_COST:
                return self._send(200, {"errors": [{
                    "message": f"Query cost is {cost}, which exceeds the single query max cost limit ({MAX_SINGLE_QUERY_COST}).",
                    "extensions": {"code": "MAX_COST_EXCEEDED", "cost": cost, "maxCost": MAX_SINGLE_QUERY_COST}}]},
                    headers)
            available = shop.bucket.refill()
            if cost > available or shop.faults.roll(shop.faults.throttle_rate):
                return self._send(200, {
                    "errors": [{"message": "Throttled", "extensions": {
                        "code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
                    "extensions": {"cost": {"requestedQueryCost": cost, "actualQueryCost": None,
                                            "throttleStatus": shop.bucket.status()}}}, headers)
            shop.bucket.available -= cost
            context = Context(world, shop, self.base_url)
            context.api_version = answered
            result = execute_document(context, document, variables)
            result["extensions"] = {"cost": {"requestedQueryCost": cost, "actualQueryCost": cost,
                                             "throttleStatus": shop.bucket.status()}}
        self._send(200, result, headers)

    # --- files -----------------------------------------------------------------------------

    def _staged_upload(self) -> None:
        body = self._body()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
        )
        fields, content = {}, None
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name == "file":
                content = part.get_payload(decode=True)
            else:
                fields[name] = part.get_content().strip() if hasattr(part, "get_content") else part.get_payload()
        if not fields.get("key") or content is None:
            return self._send(400, b"<Error><Code>InvalidArgument</Code></Error>", content_type="application/xml")
        with self.world.lock:
            self.world.uploads[fields["key"]] = content
        xml = f"<PostResponse><Key>{fields['key']}</Key></PostResponse>".encode()
        self._send(201, xml, content_type="application/xml")

    def _bulk_file(self, op_id: int) -> None:
        for shop in self.world.shops.values():
            op = shop.bulk_operations.get(op_id)
            if op is not None:
                data = ("\n".join(op.lines) + "\n").encode() if op.lines else b""
                return self._send(200, data, content_type="application/jsonl")
        self._send(404, {"errors": "Not Found"})

    # --- OAuth -----------------------------------------------------------------------------

    def _authorize(self, domain: str, query: dict) -> None:
        shop = self.world.shop(domain)
        if shop is None or query.get("client_id", [""])[0] != self.world.app_key:
            return self._send(400, {"errors": "Unknown shop or client_id"})
        code = secrets.token_hex(8)
        shop.oauth_codes[code] = {"scope": query.get("scope", [""])[0]}
        params = {"code": code, "host": base64.b64encode(f"{domain}/admin".encode()).decode(), "shop": domain,
                  "state": query.get("state", [""])[0], "timestamp": str(int(time.time()))}
        params["hmac"] = oauth_hmac(params, self.world.app_secret)
        self.send_response(302)
        self.send_header("Location", f"{query['redirect_uri'][0]}?{urlencode(params)}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _access_token(self, domain: str) -> None:
        shop = self.world.shop(domain)
        raw = self._body()
        form = json.loads(raw) if raw.startswith(b"{") else {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        if shop is None or form.get("client_id") != self.world.app_key or form.get("client_secret") != self.world.app_secret:
            return self._send(400, {"error": "invalid_client"})
        if form.get("grant_type") == "refresh_token":
            if form.get("refresh_token") not in shop.refresh_tokens:
                return self._send(400, {"error": "invalid_grant"})
            scope = shop.refresh_tokens.pop(form["refresh_token"])
        else:
            grant = shop.oauth_codes.pop(form.get("code", ""), None)
            if grant is None:
                return self._send(400, {"error": "invalid_request", "error_description": "The code is invalid"})
            scope = grant["scope"]
        token = "shpat_" + secrets.token_hex(16)
        shop.access_tokens.add(token)
        answer = {"access_token": token, "scope": scope}
        if form.get("expiring") in ("1", 1, True) or form.get("grant_type") == "refresh_token":
            refresh = "shprt_" + secrets.token_hex(16)
            shop.refresh_tokens[refresh] = scope
            answer.update({"expires_in": 3600, "refresh_token": refresh, "refresh_token_expires_in": 7776000})
        self._send(200, answer)


def oauth_hmac(params: dict, secret: str) -> str:
    message = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("hmac", "signature"))
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def webhook_hmac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


# --- webhooks ------------------------------------------------------------------------------------


def customer_payload(record: dict) -> dict:
    """REST shape of a customer as webhooks carry it since 2025-01: no tags, no consent fields."""
    return {
        "id": record["id"], "admin_graphql_api_id": f"gid://shopify/Customer/{record['id']}",
        "email": record["email"] or None, "first_name": record["first_name"], "last_name": record["last_name"],
        "phone": record["phone"] or None, "state": record["state"].lower(), "note": record["note"] or None,
        "created_at": iso(record["created_at"]), "updated_at": iso(record["updated_at"]),
        "default_address": {"city": record["city"], "province_code": record["province_code"],
                            "country_code": record["country_code"], "zip": record["zip"]}
        if record["country_code"] else None,
    }


def order_payload(shop: Shop, record: dict) -> dict:
    customer = shop.customers.get(record["customer_id"])
    utm = record.get("utm") or {}
    landing = record["landing_site"]
    if utm and "utm_" not in landing:
        landing = (landing or "/") + "?" + urlencode({f"utm_{k}": v for k, v in utm.items() if v})
    return {
        "id": record["id"], "admin_graphql_api_id": f"gid://shopify/Order/{record['id']}", "name": record["name"],
        "email": record["email"] or None, "created_at": iso(record["created_at"]),
        "updated_at": iso(record["updated_at"]), "processed_at": iso(record["processed_at"]),
        "cancelled_at": iso(record["cancelled_at"]), "financial_status": record["financial_status"].lower(),
        "fulfillment_status": None, "currency": record["currency"], "total_price": str(record["total"]),
        "subtotal_price": str(record["subtotal"]), "total_discounts": str(record["total_discounts"]),
        "total_tax": str(record["tax"]),
        "total_shipping_price_set": {"shop_money": {"amount": str(record["shipping"]), "currency_code": record["currency"]}},
        "source_name": record["source_name"], "landing_site": landing, "referring_site": record["referring_site"],
        "discount_codes": [{"code": c, "amount": "0", "type": "fixed_amount"} for c in record["discount_codes"]],
        "tags": ", ".join(record["tags"]), "test": record["test"],
        "customer": customer_payload(customer) if customer else None,
        "line_items": [{"id": i["id"], "product_id": i.get("product_id"), "variant_id": None, "sku": i.get("sku") or "",
                        "title": i["title"], "vendor": i.get("vendor") or "", "quantity": i.get("quantity", 1),
                        "price": str(i.get("price", "0")), "total_discount": str(i.get("discount", "0"))}
                       for i in record["line_items"]],
        "refunds": [{"id": 1, "transactions": [{"kind": "refund", "amount": str(record["refunded"])}]}]
        if float(record["refunded"]) else [],
    }


class WebhookSender:
    """Sends webhooks as Shopify does: raw JSON body, base64 HMAC header, ids for de-duplication."""

    def __init__(self, shop: Shop, url: str, *, secret: str | None = None, api_version: str = "2026-10"):
        self.shop = shop
        self.url = url
        self.secret = secret or shop.api_secret
        self.api_version = api_version
        self.session = requests.Session()

    def send(self, topic: str, payload: dict, *, event_id: str | None = None, secret: str | None = None,
             triggered_at: str | None = None) -> requests.Response:
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": webhook_hmac(secret or self.secret, body),
            "X-Shopify-Shop-Domain": self.shop.domain,
            "X-Shopify-API-Version": self.api_version,
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "X-Shopify-Event-Id": event_id or str(uuid.uuid4()),
            "X-Shopify-Triggered-At": triggered_at or iso(now()),
        }
        return self.session.post(self.url, data=body, headers=headers, timeout=5)
