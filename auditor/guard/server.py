"""The guard's HTTP service (``http.server``, threaded): ``POST /check`` and ``GET /healthz``; 411/413 before reading."""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from .lookup import ERROR, Guard

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    server_version = "auditor-guard"
    sys_version = ""
    timeout = 30  # seconds a client may take to send its request (slow clients do not pin threads forever)
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # route to logging, not stderr
        log.info("%s %s", self.address_string(), fmt % args)

    def _json(self, status: int, obj: Any, close: bool = False) -> None:
        body = (json.dumps(obj, sort_keys=True) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] in ("/healthz", "/health"):
            g: Guard = self.server.guard  # type: ignore[attr-defined]
            self._json(200, {"status": "ok", "indexed": g.n_indexed, "searchable": len(g.keys),
                             "embedder": g.store.embedder.get("name"), "source": g.source})
        else:
            self._json(404, {"error": "not found; POST image bytes to /check"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] not in ("/check", "/"):
            self._json(404, {"error": "not found; POST image bytes to /check"}, close=True)
            return
        limit = self.server.max_request_bytes  # type: ignore[attr-defined]
        if self.headers.get("Transfer-Encoding"):
            self._json(411, {"error": "send the image with a Content-Length (no chunked encoding)"}, close=True)
            return
        raw = self.headers.get("Content-Length")
        try:
            length = int(raw) if raw is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self._json(411, {"error": "Content-Length required"}, close=True)
            return
        if length > limit:
            # refuse before reading: the body is never buffered
            self._json(413, {"error": f"request body of {length} bytes is over the {limit}-byte limit"}, close=True)
            return
        data = self.rfile.read(length)
        if len(data) != length:
            self._json(400, {"error": "request body shorter than its Content-Length"}, close=True)
            return
        try:
            res = self.server.guard.check([data])[0]  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a server answers, it does not die
            log.exception("guard check failed")
            self._json(500, {"error": f"{type(exc).__name__}: {exc}"})
            return
        self._json(400 if res.verdict == ERROR else 200, res.to_dict())


class GuardServer(ThreadingHTTPServer):
    daemon_threads = True
    # bind exactly the address asked for (no dual-stack surprises)
    allow_reuse_address = True

    def __init__(self, guard: Guard, host: str = "127.0.0.1", port: int = 8765,
                 max_request_bytes: int = 20 * 1024 * 1024):
        self.guard = guard
        self.max_request_bytes = int(max_request_bytes)
        super().__init__((host, port), _Handler)


def make_server(guard: Guard, host: Optional[str] = None, port: Optional[int] = None,
                max_request_bytes: Optional[int] = None) -> GuardServer:
    """A ready-to-serve (not yet serving) HTTP server; defaults from the guard's config (127.0.0.1)."""
    c = guard.cfg
    host = c.host if host is None else host
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("guard: binding %s exposes the service beyond this machine; put it behind your own "
                    "authentication / TLS", host)
    return GuardServer(guard, host, c.port if port is None else port,
                       c.max_request_bytes if max_request_bytes is None else max_request_bytes)
