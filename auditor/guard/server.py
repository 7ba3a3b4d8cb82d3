"""The guard's HTTP service: a WSGI app (``POST /check``, ``GET /healthz``) served by waitress from a bounded pool.

Bounds (``report.guard``; defaults in brackets):

* ``threads`` [4] requests are checked at once; waitress's one async I/O thread reads every connection, so a slow
  or idle client costs a socket and a buffer, never a thread (``http.server`` spent one thread per connection);
* ``connection_limit`` [100] open connections; past it waitress stops accepting (clients wait in the backlog);
* ``max_request_bytes`` [20 MiB]: a larger ``Content-Length`` is answered 413 from the header, the body unread;
  waitress spools a body past 512 KiB to a temporary file while it arrives, so the buffered bodies of many
  uploads are on disk, not in memory;
* ``request_timeout_s`` [30]: a connection idle that long (a client that stopped sending) is closed;
* per request, the decoded image may hold at most ``max_pixels`` pixels (the index's ``decode.max_pixels`` when
  unset), checked from the image header before decoding.

So the memory a flood of requests can take is at most ``threads`` x (``max_request_bytes`` + the decode of a
``max_pixels`` image) plus one small buffer per open connection, whatever the number of clients.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Iterable, Optional

from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask, WSGITask

from .lookup import ERROR, Guard

log = logging.getLogger(__name__)

_JSON_HEADERS = [("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff")]


def _body(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True) + "\n").encode("utf-8")


class _JsonErrorTask(ErrorTask):
    """waitress's own refusals (413 from the header, 400 for a malformed request, 431) as JSON, like every other
    answer of the service; the connection is closed after them."""

    def execute(self) -> None:
        e = self.request.error
        limit = self.channel.server.guard_max_request_bytes
        msg = e.body
        if e.code == 413:
            msg = f"request body over the {limit}-byte limit"
        body = _body({"error": f"{e.reason}: {msg}"})
        self.status = f"{e.code} {e.reason}"
        self.response_headers.extend(_JSON_HEADERS)
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _GuardTask(WSGITask):
    def get_environment(self) -> dict:
        env = super().get_environment()
        # waitress de-chunks a chunked body before the app sees it; the service asks for a Content-Length
        env["auditor.chunked"] = bool(self.request.chunked)
        return env


class _GuardChannel(HTTPChannel):
    task_class = _GuardTask
    error_task_class = _JsonErrorTask


def guard_app(guard: Guard, max_request_bytes: int) -> Callable:
    """The WSGI application of the service (any WSGI server can run it; :class:`GuardServer` runs it bounded).

    ``POST /check`` with the image bytes as the body answers the JSON verdict (400 for an undecodable image);
    ``GET /healthz`` answers the index size; a body needs a ``Content-Length`` (411) of at most
    ``max_request_bytes`` (413, before the body is read).
    """
    limit = int(max_request_bytes)

    def app(environ: dict, start_response) -> Iterable[bytes]:
        # waitress has read the whole (capped) body before the app runs, so the connection stays in step after
        # a refusal; it closes it after its own 413/400 (the body it did not read)
        def answer(status: str, obj: Any) -> list[bytes]:
            body = _body(obj)
            start_response(status, [*_JSON_HEADERS, ("Content-Length", str(len(body)))])
            return [body]

        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if method in ("GET", "HEAD") and path in ("/healthz", "/health"):
            return answer("200 OK", {"status": "ok", "indexed": guard.n_indexed, "searchable": len(guard.keys),
                                     "embedder": guard.store.embedder.get("name"), "source": guard.source})
        if method != "POST" or path not in ("/check", "/"):
            return answer("404 Not Found", {"error": "not found; POST image bytes to /check"})
        if environ.get("auditor.chunked"):
            return answer("411 Length Required",
                          {"error": "send the image with a Content-Length (no chunked encoding)"})
        raw = environ.get("CONTENT_LENGTH")
        try:
            length = int(raw) if raw not in (None, "") else -1
        except ValueError:
            length = -1
        if length < 0:
            return answer("411 Length Required", {"error": "Content-Length required"})
        if length > limit:  # waitress refuses these from the header already; kept for any other WSGI server
            return answer("413 Request Entity Too Large",
                          {"error": f"request body of {length} bytes is over the {limit}-byte limit"})
        data = environ["wsgi.input"].read(length)
        if len(data) != length:
            return answer("400 Bad Request", {"error": "request body shorter than its Content-Length"})
        try:
            res = guard.check([data])[0]
        except Exception as exc:  # noqa: BLE001 - a server answers, it does not die
            log.exception("guard check failed")
            return answer("500 Internal Server Error", {"error": f"{type(exc).__name__}: {exc}"})
        return answer("400 Bad Request" if res.verdict == ERROR else "200 OK", res.to_dict())

    return app


class GuardServer:
    """The guard service under waitress, bound but not yet serving: :meth:`serve_forever` serves (blocking),
    :meth:`shutdown` (from another thread) stops it, :meth:`server_close` frees the socket.

    Example:
        >>> server = make_server(Guard("run"))            # doctest: +SKIP
        >>> threading.Thread(target=server.serve_forever, daemon=True).start()  # doctest: +SKIP
        >>> server.server_address                         # doctest: +SKIP
        ('127.0.0.1', 8765)
    """

    def __init__(self, guard: Guard, host: str = "127.0.0.1", port: int = 8765,
                 max_request_bytes: int = 20 * 1024 * 1024, threads: int = 4, connection_limit: int = 100,
                 request_timeout_s: float = 30.0):
        self.guard = guard
        self.max_request_bytes = int(max_request_bytes)
        self.threads = int(threads)
        self.connection_limit = int(connection_limit)
        self._server = create_server(
            guard_app(guard, self.max_request_bytes), host=host, port=port, threads=self.threads,
            connection_limit=self.connection_limit,
            max_request_body_size=self.max_request_bytes + 1,  # waitress refuses Content-Length >= this
            channel_timeout=max(1, int(round(request_timeout_s))), ident="auditor-guard",
            # how often idle connections are looked for (waitress: every 30 s): at the timeout's scale
            cleanup_interval=max(1, min(30, int(round(request_timeout_s / 2)))),
            expose_tracebacks=False, asyncore_use_poll=True,  # poll: no FD_SETSIZE cap on the socket numbers
            ipv4=":" not in host, ipv6=":" in host)
        self._server.channel_class = _GuardChannel
        self._server.guard_max_request_bytes = self.max_request_bytes
        self._stopped = threading.Event()
        self._closed = False

    @property
    def server_address(self) -> tuple[str, int]:
        return self._server.effective_host, int(self._server.effective_port)

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (or Ctrl-C)."""
        self._stopped.clear()
        try:
            self._server.run()
        finally:
            self._stopped.set()

    def _close_all(self) -> None:  # runs in the serving thread (through waitress's trigger)
        for d in list(self._server._map.values()):  # waitress keeps its sockets in this map
            d.close()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop :meth:`serve_forever` (call from another thread) and the worker threads."""
        if not self._closed:
            self._server.trigger.pull_trigger(self._close_all)
            self._stopped.wait(timeout)
            self._server.task_dispatcher.shutdown(timeout=timeout)
            self._closed = True

    def server_close(self) -> None:
        if not self._closed:
            self._close_all()
            self._server.task_dispatcher.shutdown()
            self._closed = True


def make_server(guard: Guard, host: Optional[str] = None, port: Optional[int] = None,
                max_request_bytes: Optional[int] = None) -> GuardServer:
    """A ready-to-serve (not yet serving) HTTP server; defaults from the guard's config (127.0.0.1)."""
    c = guard.cfg
    host = c.host if host is None else host
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("guard: binding %s exposes the service beyond this machine; put it behind your own "
                    "authentication / TLS", host)
    return GuardServer(guard, host, c.port if port is None else port,
                       c.max_request_bytes if max_request_bytes is None else max_request_bytes,
                       threads=c.threads, connection_limit=c.connection_limit,
                       request_timeout_s=c.request_timeout_s)
