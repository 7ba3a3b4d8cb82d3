"""The http generator against hostile servers on 127.0.0.1 (issue 19, item 4): a 1 byte/s trickle is cut at the
deadline, a cross-origin 302 is refused and the second origin never sees the Authorization header, header values
and URL tokens never reach the fingerprint or provenance, and the per-image decode budget refuses scan bombs and
oversized images."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from auditor.probe.config import ProbeConfig
from auditor.probe.generators import build_generator
from auditor.probe.config import fingerprint as _fingerprint, public_config

SECRET = "Bearer sk-very-secret-value-123"


def _png(size=(16, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (9, 10, 20)).save(buf, "PNG")
    return buf.getvalue()


def _body(img: bytes) -> bytes:
    return json.dumps({"images": [base64.b64encode(img).decode()]}).encode()


class _Other(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append(dict(self.headers))
        body = _body(_png())
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Main(BaseHTTPRequestHandler):
    other = ""
    payload = b""

    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", self.other + "/steal")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/same":
                self.send_response(307)
                self.send_header("Location", "/image")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/image":
                body = _body(self.payload or _png())
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/trickle":  # headers at once, then 1 byte per second
                body = _body(_png())
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for b in body[:20]:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(1.0)
        except (BrokenPipeError, ConnectionResetError):
            pass


def _serve(handler):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


@pytest.fixture(scope="module")
def servers():
    other, other_url = _serve(_Other)
    _Main.other = other_url
    main, main_url = _serve(_Main)
    yield main_url, other_url
    for s in (main, other):
        s.shutdown()
        s.server_close()


def _gen(url, **http):
    cfg = ProbeConfig(generator="http", steps=3, width=16, height=8,
                      http={"url": url, "backoff_s": 0.0, "retries": 0, "headers": {"Authorization": SECRET},
                            **http})
    return build_generator(cfg)


def test_trickle_is_cut_at_the_deadline(servers):
    t0 = time.monotonic()
    out = _gen(servers[0] + "/trickle", timeout_s=2.5).generate([("a", 0)])
    took = time.monotonic() - t0
    assert out[0].image is None and "deadline" in out[0].error
    assert took < 2.5 + 2.0  # one read of at most the socket timeout past the deadline, never the 20 s trickle


def test_cross_origin_redirect_is_refused_and_gets_no_credentials(servers):
    _Other.seen.clear()
    out = _gen(servers[0] + "/redirect").generate([("a", 0)])
    assert out[0].image is None and "another origin" in out[0].error
    assert _Other.seen == []  # the other origin was never contacted, so it never saw the Authorization header
    assert SECRET not in out[0].error


def test_same_origin_redirect_is_followed(servers):
    out = _gen(servers[0] + "/same").generate([("a", 0)])
    assert out[0].error is None and out[0].image.size == (16, 8)


def test_header_values_and_url_tokens_never_written():
    cfg = ProbeConfig(generator="http", http={"url": "https://user:pw@api.example/gen?key=abc123",
                                              "headers": {"Authorization": SECRET, "X-Api-Key": "k-456"}})
    g = build_generator(cfg)
    written = json.dumps([public_config(cfg), _fingerprint(cfg), g.provenance()])
    for secret in (SECRET, "k-456", "abc123", "pw"):
        assert secret not in written
    assert "Authorization" in written and "X-Api-Key" in written
    # rotating the key or moving the endpoint does not change the fingerprint
    cfg2 = ProbeConfig(generator="http", http={"url": "https://other.example/v2?key=zzz",
                                               "headers": {"Authorization": "Bearer new", "X-Api-Key": "new"}})
    assert _fingerprint(cfg) == _fingerprint(cfg2)
    cfg3 = ProbeConfig(generator="http", http={"url": "https://api.example/gen", "headers": {"Other": "x"}})
    assert _fingerprint(cfg) != _fingerprint(cfg3)  # header names still count


def _scan_bomb(n: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (1, 2, 3)).save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    # extra start-of-scan markers before EOI: what a scan bomb looks like to the marker count
    return data[:-2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" * n + data[-2:]


def test_decode_budget_scan_bomb_and_pixels(servers):
    _Main.payload = _scan_bomb(500)
    try:
        out = _gen(servers[0] + "/image", max_jpeg_scans=64).generate([("a", 0)])
        assert out[0].image is None and "max_jpeg_scans" in out[0].error
        _Main.payload = _png((300, 300))
        out = _gen(servers[0] + "/image", max_pixels=10_000).generate([("a", 0)])
        assert out[0].image is None and "pixels" in out[0].error
        out = _gen(servers[0] + "/image").generate([("a", 0)])
        assert out[0].error is None and out[0].image.size == (300, 300)
    finally:
        _Main.payload = b""
