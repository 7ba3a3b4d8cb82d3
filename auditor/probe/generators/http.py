"""``http`` generator: one JSON POST per (prompt, seed).

Request body (``Content-Type: application/json``)::

    {"prompt": "a photo of ...", "seed": 0, "steps": 50, "guidance": 7.5, "width": 512, "height": 512,
     "negative_prompt": "..."}            # width/height/negative_prompt only when configured;
                                           # probe.http.extra is merged into the body

Response body (JSON), either form::

    {"images": ["<base64 PNG or JPEG>", ...]}                  # this tool's minimal schema
    {"data": [{"b64_json": "<base64 PNG>"}, ...]}              # the style of common image APIs

The first image is used; a ``data:image/...;base64,`` prefix is accepted. Timeouts, connection errors, HTTP 429
and 5xx are retried ``retries`` times with exponential backoff (``backoff_s * 2**attempt``); other 4xx,
malformed JSON, a body over ``max_response_bytes`` and undecodable images are not retried. Every failure becomes
an error on its request (recorded by the runner; the run continues). At most ``concurrency`` requests are in
flight. Images are decoded with the index's safe decoder (format whitelist, pixel limit).
"""

from __future__ import annotations

import base64
import binascii
import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from ...index.decode import decode_rgb
from .base import GENERATORS, Generation, Generator, error_text


class HttpError(Exception):
    def __init__(self, msg: str, retry: bool):
        super().__init__(msg)
        self.retry = retry


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

    def _once(self, payload: bytes) -> bytes:
        headers = {"Content-Type": "application/json", "Accept": "application/json", **self.h.headers}
        req = urllib.request.Request(self.h.url, data=payload, headers=headers, method="POST")
        limit = self.h.max_response_bytes
        try:
            with urllib.request.urlopen(req, timeout=self.h.timeout_s) as resp:  # noqa: S310 - configured URL
                declared = resp.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise HttpError(f"response of {declared} bytes is over the {limit}-byte limit", retry=False)
                body = resp.read(limit + 1)
        except urllib.error.HTTPError as exc:
            retry = exc.code == 429 or exc.code >= 500
            raise HttpError(f"HTTP {exc.code} {exc.reason}", retry=retry) from None
        except (socket.timeout, TimeoutError) as exc:
            raise HttpError(f"timeout after {self.h.timeout_s}s: {exc}", retry=True) from None
        except urllib.error.URLError as exc:
            retry = not isinstance(exc.reason, ValueError)
            raise HttpError(f"connection error: {exc.reason}", retry=retry) from None
        except (ConnectionError, OSError) as exc:
            raise HttpError(f"connection error: {exc}", retry=True) from None
        if len(body) > limit:
            raise HttpError(f"response is over the {limit}-byte limit", retry=False)
        return body

    def one(self, prompt: str, seed: int) -> Generation:
        payload = json.dumps(self.body(prompt, seed)).encode("utf-8")
        nominal = self.nominal_unet_evals()
        last = "no attempt"
        for attempt in range(self.h.retries + 1):
            try:
                data = parse_response(self._once(payload))
                img = decode_rgb(data)
                return Generation(prompt, seed, img, None, nominal)
            except HttpError as exc:
                last = str(exc)
                if not exc.retry:
                    break
            except Exception as exc:  # noqa: BLE001 - undecodable image etc.
                last = error_text(exc)
                break
            if attempt < self.h.retries:
                time.sleep(self.h.backoff_s * (2 ** attempt))
        tries = attempt + 1
        return Generation(prompt, seed, None, f"{last} (after {tries} attempt{'s' if tries > 1 else ''})", 0)

    def generate(self, requests: Sequence[tuple[str, int]]) -> list[Generation]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.h.concurrency, len(requests))) as ex:
            return list(ex.map(lambda r: self.one(*r), requests))

    def provenance(self) -> dict[str, Any]:
        return {"generator": self.name, "model": self.cfg.model, "url": self.h.url,
                "headers": sorted(self.h.headers),  # names only: values may be secrets
                "extra": self.h.extra, "timeout_s": self.h.timeout_s, "retries": self.h.retries}
