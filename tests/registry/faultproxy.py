"""A fault-injecting HTTP proxy in front of a real server (docker-registry, the token server).

Rules say which requests (a substring of the path: `/blobs/`, `/manifests/`, `/token`, a digest)
get which fault, how many times: an error status (500/502/503, 429 with or without Retry-After),
a connection reset in the middle of the body, a truncated body, a corrupted body, or no answer
at all. Everything else is forwarded as is. The proxy counts GETs and bytes sent per path and
records Range headers, so tests assert what the client asked for. `slow` paces every body.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Fault:
    kind: str  # status | reset | truncate | corrupt | stall
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)


def status(code: int, retry_after: str | None = None) -> Fault:
    return Fault("status", code, {"Retry-After": retry_after} if retry_after is not None else {})


RESET, TRUNCATE, CORRUPT, STALL = Fault("reset"), Fault("truncate"), Fault("corrupt"), Fault("stall")


@dataclass
class _Rule:
    match: str
    fault: Fault
    times: int  # -1: every time


class FaultProxy:
    """`http://127.0.0.1:PORT` forwarding to `upstream` (host:port), with faults from `inject`."""

    def __init__(self, upstream: str, rewrite: tuple[str, str] | None = None) -> None:
        self.upstream = upstream
        self.rewrite = rewrite  # (old, new) replaced in response headers, e.g. a token realm
        self.rules: list[_Rule] = []
        self.gets: collections.Counter[str] = collections.Counter()
        self.sent: collections.Counter[str] = collections.Counter()
        self.ranges: list[tuple[str, str]] = []
        self.injected: collections.Counter[str] = collections.Counter()  # fault kind -> times
        self.slow = 0.0  # seconds per 16 KiB of body
        self.stall_seconds = 2.0
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def inject(self, match: str, fault: Fault, times: int = 1) -> None:
        with self._lock:
            self.rules.append(_Rule(match, fault, times))

    def blob_gets(self) -> dict[str, int]:
        """GETs per blob digest."""
        return {p.rsplit("/", 1)[1]: n for p, n in self.gets.items() if "/blobs/" in p}

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for rule in self.rules:
                if rule.match in path and rule.times != 0:
                    rule.times -= 1
                    label = f"{rule.fault.kind} {rule.fault.status}" if rule.fault.status else rule.fault.kind
                    if rule.fault.kind == "status" and rule.fault.status == 429:
                        label += " Retry-After" if rule.fault.headers else " no Retry-After"
                    self.injected[label] += 1
                    return rule.fault
        return None

    def close(self) -> None:
        self.closed.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self.forward()

            def do_HEAD(self) -> None:  # noqa: N802
                self.forward()

            def forward(self) -> None:
                path = self.path
                with proxy._lock:
                    if self.command == "GET":
                        proxy.gets[path.split("?")[0]] += 1
                    if self.headers.get("Range"):
                        proxy.ranges.append((path, self.headers["Range"]))
                fault = proxy._take_fault(path)
                if fault and fault.kind == "stall":
                    proxy.closed.wait(proxy.stall_seconds)
                    self.close_connection = True
                    return
                if fault and fault.kind == "status":
                    body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}'
                    self.send_response(fault.status)
                    for key, value in fault.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, path, headers=headers)
                upstream = conn.getresponse()
                body = upstream.read()
                conn.close()
                if fault and fault.kind == "corrupt" and body:
                    body = body[:-1] + bytes([body[-1] ^ 0xFF])
                self.send_response(upstream.status, upstream.reason)
                for key, value in upstream.getheaders():
                    if key.lower() not in HOP_BY_HOP:
                        if proxy.rewrite:
                            value = value.replace(*proxy.rewrite)
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                cut = len(body) // 2 if fault and fault.kind in ("reset", "truncate") else len(body)
                self.send_body(path, body[:cut])
                if fault and fault.kind == "reset":
                    # SO_LINGER 0: close() sends RST, the client sees "connection reset".
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                if cut < len(body):
                    self.close_connection = True

            def send_body(self, path: str, data: bytes) -> None:
                step = 16 << 10
                for start in range(0, len(data), step):
                    if proxy.slow:
                        time.sleep(proxy.slow)
                    self.wfile.write(data[start:start + step])
                    self.wfile.flush()
                    with proxy._lock:
                        proxy.sent[path] += len(data[start:start + step])

        return Handler
