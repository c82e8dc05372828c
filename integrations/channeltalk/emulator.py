"""A local Channel Talk Open API (v5 users) for tests and the demo: real HTTP on loopback.

``GET /open/v5/users/@{memberId}`` and ``PUT /open/v5/users/@{memberId}`` (upsert: ``profile`` keys
merged, ``tags`` replacing the list), ``x-access-key``/``x-access-secret`` checked (401 otherwise),
a per-second rate limit answered with 429 and the ``x-ratelimit-*`` headers, and injectable faults
(the next N requests answer 500).
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class ChannelTalkState:
    def __init__(self, access_key: str, access_secret: str, *, limit_per_second: int = 1000):
        self.access_key, self.access_secret = access_key, access_secret
        self.users: dict[str, dict] = {}
        self.limit_per_second = limit_per_second
        self.window_start, self.window_count = 0, 0
        self.faults = 0  # the next N requests answer 500
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.next_id = 1

    def add_user(self, member_id: str, *, tags: list[str] | None = None, profile: dict | None = None) -> dict:
        with self.lock:
            user = {"id": f"u{self.next_id}", "memberId": member_id, "profile": dict(profile or {}),
                    "tags": list(tags or []), "createdAt": int(time.time() * 1000)}
            self.next_id += 1
            self.users[member_id] = user
            return user


class ChannelTalkEmulator:
    def __init__(self, access_key: str = "ct-key", access_secret: str = "ct-secret", *, port: int = 0,
                 limit_per_second: int = 1000):
        self.state = ChannelTalkState(access_key, access_secret, limit_per_second=limit_per_second)
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict | None = None, headers: dict | None = None):
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, str(value))
                self.end_headers()
                self.wfile.write(data)

            def _gate(self) -> str | None:
                if (self.headers.get("x-access-key") != state.access_key
                        or self.headers.get("x-access-secret") != state.access_secret):
                    self._send(401, {"errors": [{"message": "invalid access key"}]})
                    return None
                with state.lock:
                    state.requests.append((self.command, self.path))
                    if state.faults:
                        state.faults -= 1
                        self._send(500, {"errors": [{"message": "injected fault"}]})
                        return None
                    now = time.time()
                    second = math.floor(now)
                    if second != state.window_start:
                        state.window_start, state.window_count = second, 0
                    state.window_count += 1
                    remaining = state.limit_per_second - state.window_count
                    limits = {"x-ratelimit-limit": state.limit_per_second, "x-ratelimit-remaining": max(0, remaining),
                              "x-ratelimit-reset": second + 1}
                    if remaining < 0:
                        self._send(429, {"errors": [{"message": "too many requests"}]}, limits)
                        return None
                prefix = "/open/v5/users/@"
                if not self.path.startswith(prefix):
                    self._send(404, {"errors": [{"message": "not found"}]})
                    return None
                return unquote(self.path[len(prefix):])

            def do_GET(self):
                member_id = self._gate()
                if member_id is None:
                    return
                user = state.users.get(member_id)
                if user is None:
                    self._send(404, {"errors": [{"message": "user not found"}]})
                else:
                    self._send(200, {"user": user})

            def do_PUT(self):
                member_id = self._gate()
                if member_id is None:
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                user = state.users.get(member_id) or state.add_user(member_id)
                with state.lock:
                    user["profile"].update(body.get("profile") or {})
                    if "tags" in body:
                        user["tags"] = list(body["tags"])  # the whole list is replaced
                self._send(200, {"user": user})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> ChannelTalkEmulator:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
