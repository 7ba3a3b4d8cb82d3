"""``http`` generator: one JSON POST per (prompt, seed).

Request body (``Content-Type: application/json``)::

    {"prompt": "a photo of ...", "seed": 0, "steps": 50, "guidance": 7.5, "width": 512, "height": 512,
     "negative_prompt": "..."}            # width/height/negative_prompt only when configured;
                                           # probe.http.extra is merged into the body

Response body (JSON), either form::

    {"images": ["<base64 PNG or JPEG>", ...]}                  # this tool's minimal schema
    {"data": [{"b64_json": "<base64 PNG>"}, ...]}              # the style of common image APIs

The first image is used; a ``data:image/...;base64,`` prefix is accepted.

Transport (:mod:`auditor.probe.http_client`, shared with the prompt file's reference fetcher): a :mod:`requests`
session per thread with urllib3 ``Retry`` (``retries`` extra attempts on connect errors, read timeouts, HTTP 429
and 5xx; ``Retry-After`` is not obeyed, so a server cannot park the probe; backoff ``backoff_s * 2**(n-1)``).
Other 4xx, malformed JSON, a body over ``max_response_bytes`` and undecodable images are not retried. Every failure
becomes an error on its request (recorded by the runner; the run continues).

- **Deadline.** ``timeout_s`` bounds each attempt as a whole: the socket timeout covers connect and headers, and
  the body is read with ``read1`` against a monotonic deadline, so a server trickling 1 byte/s is cut at the
  deadline (a per-read socket timeout alone never fires on a trickle).
- **Redirects.** Never followed by requests. A same-origin redirect is re-POSTed (at most 3); a redirect to another
  origin (scheme, host or port) is refused without contacting it, so ``headers`` (tokens) never leave the
  configured origin. ``trust_env`` is off: no ``.netrc`` credentials or environment proxies are added.
- **Secrets.** Header *values* are only sent, never written: provenance lists header names, and the URL is
  recorded without its query string or user info.
- **Decode budget.** A response image is decoded with the index's safe decoder (format whitelist) under
  ``max_pixels``, a JPEG with more than ``max_jpeg_scans`` scans is refused from its markers before decoding
  (each progressive scan costs a full decode pass: about 5 ms per scan was measured, issue 19), and decoding
  stops at ``cpu_budget_s`` of the request thread's CPU time (``index/decode_bounds.CpuBudget``).
At most ``concurrency`` requests are in flight.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence
from urllib.parse import urljoin

import requests

from ...index.decode import DecodeError, decode_rgb
from ..http_client import (RETRY_STATUS, HttpError, attempts_of, make_session, origin, read_body,  # noqa: F401
                           redacted_url, transport_error)  # RETRY_STATUS, redacted_url: re-exported
from .base import GENERATORS, Generation, Generator, error_text

MAX_SAME_ORIGIN_REDIRECTS = 3


def parse_response(body: bytes) -> bytes:
    """The first image's bytes from a response body (either schema)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HttpError(f"malformed JSON response: {exc}", retry=False) from None
    b64 = None
    if isinstance(doc, dict):
        if isinstance(doc.get("images"), list) and doc["images"]:
            b64 = doc["images"][0]
        elif isinstance(doc.get("data"), list) and doc["data"] and isinstance(doc["data"][0], dict):
            b64 = doc["data"][0].get("b64_json")
    if not isinstance(b64, str) or not b64:
        raise HttpError("response has no image (expected {'images': [b64]} or {'data': [{'b64_json': b64}]})",
                        retry=False)
    if b64.startswith("data:") and "," in b64:
        b64 = b64.split(",", 1)[1]
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HttpError(f"invalid base64 image: {exc}", retry=False) from None


@GENERATORS.register("http")
class HttpGenerator(Generator):
    name = "http"

    def __init__(self, cfg):
        super().__init__(cfg)
        if not cfg.http.url:
            raise ValueError("the http generator needs probe.http.url")
        self.h = cfg.http
        self._local = threading.local()

    def body(self, prompt: str, seed: int) -> dict[str, Any]:
        b: dict[str, Any] = {"prompt": prompt, "seed": int(seed), "steps": self.cfg.steps,
                             "guidance": self.cfg.guidance_scale}
        if self.cfg.width:
            b["width"] = self.cfg.width
        if self.cfg.height:
            b["height"] = self.cfg.height
        if self.cfg.negative_prompt is not None:
            b["negative_prompt"] = self.cfg.negative_prompt
        b.update(self.h.extra)
        return b

    def _session(self) -> requests.Session:
        sess = getattr(self._local, "session", None)
        if sess is None:
            sess = make_session(self.h.retries, self.h.backoff_s, self.h.concurrency)
            self._local.session = sess
        return sess

    def _once(self, payload: bytes) -> tuple[bytes, int]:
        """(body, attempts) of one request, retries included; raises :class:`HttpError`."""
        headers = {"Content-Type": "application/json", "Accept": "application/json", **self.h.headers}
        url = self.h.url
        home = origin(url)
        deadline = time.monotonic() + self.h.timeout_s
        for _ in range(MAX_SAME_ORIGIN_REDIRECTS + 1):
            try:
                resp = self._session().post(url, data=payload, headers=headers, timeout=self.h.timeout_s,
                                            allow_redirects=False, stream=True)
            except requests.exceptions.RequestException as exc:
                raise transport_error(exc, self.h.retries, self.h.timeout_s) from None
            with resp:
                attempts = attempts_of(resp)
                if resp.is_redirect:
                    target = urljoin(url, resp.headers.get("Location", ""))
                    if origin(target) != home:
                        raise HttpError(f"redirect to another origin ({origin(target)}) refused: credentials "
                                        "are never sent there", retry=False)
                    url = target
                    deadline = time.monotonic() + self.h.timeout_s
                    continue
                if resp.status_code >= 400:
                    err = HttpError(f"HTTP {resp.status_code} {resp.reason}", retry=False)
                    err.attempts = attempts
                    raise err
                body = read_body(resp, self.h.max_response_bytes, deadline, self.h.timeout_s)
            return body, attempts
        raise HttpError(f"more than {MAX_SAME_ORIGIN_REDIRECTS} redirects", retry=False)

    def decode(self, data: bytes):
        try:  # scans counted from the markers before decoding; CPU budget on this request thread's CPU time
            return decode_rgb(data, max_pixels=self.h.max_pixels, max_bytes=self.h.max_response_bytes,
                              max_jpeg_scans=self.h.max_jpeg_scans, cpu_budget_s=self.h.cpu_budget_s)
        except DecodeError as exc:
            if exc.reason in ("too_many_scans", "over_cpu_budget"):
                raise HttpError(f"{exc} (max_jpeg_scans={self.h.max_jpeg_scans}, "
                                f"cpu_budget_s={self.h.cpu_budget_s:g})", retry=False) from None
            raise

    def one(self, prompt: str, seed: int) -> Generation:
        payload = json.dumps(self.body(prompt, seed)).encode("utf-8")
        nominal = self.nominal_unet_evals()
        tries = 1
        try:
            body, tries = self._once(payload)
            img = self.decode(parse_response(body))
            return Generation(prompt, seed, img, None, nominal)
        except HttpError as exc:
            last = str(exc)
            tries = getattr(exc, "attempts", tries)
        except Exception as exc:  # noqa: BLE001 - undecodable image etc.
            last = error_text(exc)
        return Generation(prompt, seed, None, f"{last} (after {tries} attempt{'s' if tries > 1 else ''})", 0)

    def generate(self, requests: Sequence[tuple[str, int]]) -> list[Generation]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.h.concurrency, len(requests))) as ex:
            return list(ex.map(lambda r: self.one(*r), requests))

    def provenance(self) -> dict[str, Any]:
        return {"generator": self.name, "model": self.cfg.model, "url": redacted_url(self.h.url),
                "headers": sorted(self.h.headers),  # names only: values may be secrets
                "extra": self.h.extra, "timeout_s": self.h.timeout_s, "retries": self.h.retries}

