"""The http generator against a stub server on 127.0.0.1 (normal, slow, failing, malformed, oversized) and the
python-callable generator."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
from PIL import Image

from auditor.probe.config import ProbeConfig
from auditor.probe.generators import GENERATORS, build_generator
from support.helpers import JsonStubHandler


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (seed % 256, 10, 20)).save(buf, "PNG")
    return buf.getvalue()


class _Handler(JsonStubHandler):
    hits: dict[str, int] = {}
    bodies: list[dict] = []
    lock = threading.Lock()
    active = 0
    max_active = 0

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.hits[self.path] = self.hits.get(self.path, 0) + 1
            self.bodies.append(req)
            type(self).active += 1
            type(self).max_active = max(type(self).max_active, type(self).active)
        try:
            b64 = base64.b64encode(_png(req["seed"])).decode()
            if self.path == "/ok":
                time.sleep(0.05)
                self._send(200, json.dumps({"images": [b64]}).encode())
            elif self.path == "/openai":
                self._send(200, json.dumps({"data": [{"b64_json": "data:image/png;base64," + b64}]}).encode())
            elif self.path == "/slow":
                time.sleep(1.5)
                self._send(200, json.dumps({"images": [b64]}).encode())
            elif self.path == "/fail500":
                self._send(500, b'{"error": "boom"}')
            elif self.path == "/flaky":  # fails twice per prompt, then works
                n = sum(1 for b in self.bodies if b["prompt"] == req["prompt"] and b["seed"] == req["seed"])
                if n <= 2:
                    self._send(503, b"{}")
                else:
                    self._send(200, json.dumps({"images": [b64]}).encode())
            elif self.path == "/badjson":
                self._send(200, b'{"images": [')
            elif self.path == "/noimage":
                self._send(200, b'{"images": []}')
            elif self.path == "/big":
                self._send(200, json.dumps({"images": [b64], "pad": "x" * 50_000}).encode())
            elif self.path == "/400":
                self._send(400, b'{"error": "bad request"}')
            else:
                self._send(404, b"{}")
        finally:
            with self.lock:
                type(self).active -= 1


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _gen(url: str, **http):
    cfg = ProbeConfig(generator="http", steps=7, guidance_scale=3.0, width=16, height=8,
                      http={"url": url, "backoff_s": 0.0, **http})
    return build_generator(cfg)


def test_registry():
    assert GENERATORS.names() == ["diffusers", "http", "python"]


def test_http_normal_schema_order_and_concurrency(server):
    _Handler.bodies.clear()
    _Handler.max_active = 0
    g = _gen(server + "/ok", concurrency=3)
    reqs = [(f"prompt {i}", i) for i in range(9)]
    out = g.generate(reqs)
    assert [(o.prompt, o.seed) for o in out] == reqs
    assert all(o.error is None for o in out)
    assert [o.image.getpixel((0, 0))[0] for o in out] == list(range(9))  # each image belongs to its seed
    assert all(o.unet_evals == 7 * 2 for o in out)
    body = _Handler.bodies[0]
    assert set(body) == {"prompt", "seed", "steps", "guidance", "width", "height"}
    assert body["steps"] == 7 and body["guidance"] == 3.0
    assert 1 < _Handler.max_active <= 3


def test_http_openai_style_response(server):
    out = _gen(server + "/openai").generate([("a", 5)])
    assert out[0].error is None and out[0].image.size == (16, 8) and out[0].image.getpixel((0, 0))[0] == 5


def test_http_timeout_is_retried_then_recorded(server):
    _Handler.hits.pop("/slow", None)
    out = _gen(server + "/slow", timeout_s=0.3, retries=1).generate([("a", 0)])
    assert out[0].image is None and "timeout" in out[0].error and "2 attempts" in out[0].error
    assert out[0].unet_evals == 0


def test_http_500_retries_then_error_and_the_rest_continue(server):
    _Handler.hits.pop("/fail500", None)
    g = _gen(server + "/fail500", retries=2)
    out = g.generate([("a", 0), ("b", 1)])
    assert all(o.image is None and "HTTP 500" in o.error and "3 attempts" in o.error for o in out)
    assert _Handler.hits["/fail500"] == 6


def test_http_transient_503_recovers(server):
    out = _gen(server + "/flaky", retries=3).generate([("flaky", 1)])
    assert out[0].error is None and out[0].image is not None


@pytest.mark.parametrize("path,msg", [("/badjson", "malformed JSON"), ("/noimage", "no image"),
                                      ("/400", "HTTP 400")])
def test_http_bad_responses_are_not_retried(server, path, msg):
    _Handler.hits.pop(path, None)
    out = _gen(server + path, retries=3).generate([("a", 0)])
    assert out[0].image is None and msg in out[0].error and "1 attempt)" in out[0].error
    assert _Handler.hits[path] == 1


def test_http_oversized_response(server):
    out = _gen(server + "/big", max_response_bytes=10_000).generate([("a", 0)])
    assert out[0].image is None and "limit" in out[0].error
    ok = _gen(server + "/big", max_response_bytes=1_000_000).generate([("a", 0)])
    assert ok[0].error is None


def test_http_unreachable_is_an_error(server):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    out = _gen(f"http://127.0.0.1:{port}/x", retries=1).generate([("a", 0)])
    assert out[0].image is None and "connection" in out[0].error


# --- python callable ------------------------------------------------------------------------------------------
CALLS: list[dict] = []


def fake_model(prompts, seeds, **params):
    CALLS.append({"prompts": list(prompts), "seeds": list(seeds), **params})
    if any("explode" in p for p in prompts):
        raise RuntimeError("model exploded")
    return [Image.new("L", (8, 8), s) for s in seeds]


def wrong_count(prompts, seeds, **params):
    return [Image.new("RGB", (8, 8))]


def test_python_callable(monkeypatch):
    CALLS.clear()
    cfg = ProbeConfig(generator="python", steps=5, guidance_scale=1.0,
                      python={"callable": f"{__name__}:fake_model", "params": {"lora": "x"}, "batch_size": 4})
    g = build_generator(cfg)
    reqs = [("a", 1), ("b", 2), ("explode now", 3), ("c", 4), ("d", 5)]
    out = g.generate(reqs)
    assert [(o.prompt, o.seed) for o in out] == reqs
    assert [o.error is None for o in out] == [True, True, False, True, True]
    assert "model exploded" in out[2].error
    assert out[0].image.mode == "RGB" and out[3].image.getpixel((0, 0)) == (4, 4, 4)
    assert out[0].unet_evals == 5  # nominal: steps x 1 without guidance
    assert CALLS[0] == {"prompts": ["a", "b", "explode now", "c"], "seeds": [1, 2, 3, 4], "steps": 5,
                        "guidance_scale": 1.0, "lora": "x"}
    assert len(CALLS) == 1 + 4 + 1  # failing batch, its requests one by one, the last batch


def test_python_callable_wrong_count_and_bad_spec():
    g = build_generator(ProbeConfig(generator="python", python={"callable": f"{__name__}:wrong_count"}))
    out = g.generate([("a", 1), ("b", 2)])
    assert out[0].error is None  # retried one by one: one image per call is right
    with pytest.raises(ValueError):
        build_generator(ProbeConfig(generator="python", python={"callable": "no_colon"}))
    with pytest.raises(ModuleNotFoundError):
        build_generator(ProbeConfig(generator="python", python={"callable": "not_a_module_xyz:f"}))
