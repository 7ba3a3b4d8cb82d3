"""Reference images named in a ``--prompts`` file: each prompt row's ``reference`` resolved to an image that joins
the caption's references (:class:`~auditor.probe.references.References`) ahead of the index's own images of the
same caption, so every fused signal (tile rule, pHash, layout, copy descriptor) compares against it, with or
without an index.

A reference is, tried in this order:

1. an **index key** (``key``, or ``shard/key`` when a key is in several shards) -> the index's image;
   ``reference_source = prompt_file:key``, ``best_key``/``best_shard`` the index's;
2. an **http(s) URL** -> fetched (``prompt_file:url``; ``best_key`` = the URL without user info, query or
   fragment, where signatures and tokens are put);
3. a **local path** (absolute, or relative to the prompts file's folder, then to the current folder) -> that file
   (``prompt_file:path``; ``best_key`` = the path relative to the prompts file's folder, or its file name: no
   absolute local path is written).

Fetching (``probe.fetch_references``, on by default): only the references of the captions whose generations are
judged (within ``top_n`` and the UNet budget, :func:`auditor.probe.budget.confirm_reach`; never the whole file),
each once per run, concurrently (``probe.reference_concurrency``) with a progress bar when there are more than a
handful (a generation screen fetches its caption's reference when it judges it). The transport is
:mod:`auditor.probe.http_client`'s: urllib3 ``Retry`` on connect errors, 429 and 5xx (``probe.reference_retries``),
``trust_env`` off (no ``.netrc``, no proxies), no credential header; a URL's own user info goes to its origin only;
redirects followed by hand, http(s) only, at most ``MAX_REDIRECTS``; one deadline ``probe.reference_timeout_s``
for the redirects and the body (each attempt urllib3 makes gets what is left of it); ``probe.reference_max_bytes``.
Fetched and local bytes are untrusted: decoded by the index's bounded decoder (format allow-list, pixel limit,
progressive JPEG scan cap, CPU budget: :func:`auditor.index.decode.decode_rgb`). A fetched image that decodes is
cached as ``RUN_DIR/probe/references/<sha256 of the URL>`` (a rerun reads it, never the network).

Every failure -- DNS, a refused connection, HTTP 404, a timeout, bytes that are not an image, too many bytes, a
path that does not exist -- is one row of ``probe/errors.parquet`` (key = the reference as
:meth:`PromptReferences.shown` writes it, stage ``probe.reference``, the error naming the caption's cluster id)
and is never fatal: the caption is probed with its other references, or with the reference-free signals.

Example:
    >>> refs = PromptReferences(ProbeConfig(), run_dir / "probe" / "references", prompts_dir, store, errors)
    >>> refs.prefetch([("https://example.com/a.jpg", -1), ("images/b.png", -2)])
    >>> r = refs.get("images/b.png", -2)
    >>> r.source, r.ident
    ('prompt_file:path', ('images/b.png', ''))
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import urljoin, urlsplit

import requests
from PIL import Image
from tqdm.auto import tqdm

from ..utils import ErrorRecord, atomic_path
from .http_client import HttpError, make_session, origin, read_body, redacted_url, transport_error

log = logging.getLogger(__name__)

SOURCE_KEY, SOURCE_URL, SOURCE_PATH = "prompt_file:key", "prompt_file:url", "prompt_file:path"
MAX_REDIRECTS = 5
PROGRESS_MIN = 8  # a bar only when more than a handful of URLs are fetched
_URL = re.compile(r"^https?://", re.IGNORECASE)


def _clean(ref) -> Optional[str]:
    """The reference of a prompt row, stripped; None for none (empty, or pandas' "nan"/"None" of a blank cell)."""
    ref = "" if ref is None else str(ref).strip()
    return ref if ref and ref.lower() not in ("nan", "none") else None


class UnresolvedReference(Exception):
    """A reference that could not be resolved (the message is what errors.parquet records)."""


@dataclass(frozen=True)
class PromptReference:
    """A resolved reference: ``ident`` is the (key, shard) written as ``best_key``/``best_shard``."""

    ident: tuple[str, str]
    image: Image.Image
    source: str


class PromptReferences:
    """Resolves, fetches and caches the prompts file's references; ``get(ref, cluster_id)`` per row."""

    def __init__(self, cfg, cache_dir: Path, base_dir: Optional[Path], store, errors: list[ErrorRecord],
                 load_index_image=None):
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.store = store
        self.errors = errors
        self.load_index_image = load_index_image  # (key, shard) -> image or None (References.load: cached, recorded)
        self.counts: Counter = Counter()  # fetched, cached, path, key, failed, skipped
        self._done: dict[str, Optional[PromptReference]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._keys: Optional[tuple[dict, set]] = None

    # --- resolution ----------------------------------------------------------------------------------------
    def get(self, ref: Optional[str], cluster_id) -> Optional[PromptReference]:
        """The reference image of one prompt row (resolved once per reference; None when it has none or fails)."""
        ref = _clean(ref)
        if ref is None:
            return None
        with self._lock:
            if ref in self._done:
                return self._done[ref]
        try:
            got = self._resolve(ref)
        except Exception as exc:  # noqa: BLE001 - recorded; the caption is probed with its other references
            msg = str(exc) if isinstance(exc, (UnresolvedReference, HttpError)) else f"{type(exc).__name__}: {exc}"
            self.errors.append(ErrorRecord(self.shown(ref), "", "probe.reference", f"cluster {cluster_id}: {msg}"))
            self._count("failed")
            got = None
        with self._lock:
            self._done[ref] = got
        return got

    def prefetch(self, rows: Iterable[tuple[Optional[str], int]]) -> None:
        """Resolve the references of ``rows`` ((reference, cluster id)) now, the URLs concurrently."""
        seen: set[str] = set()
        todo = []
        for r, c in rows:  # each reference once (the first row naming it is the one its errors name)
            r = _clean(r)
            if r is not None and r not in seen and r not in self._done:
                seen.add(r)
                todo.append((r, c))
        if not todo:
            return
        # index images and local files are read here, in order; only URLs are fetched in threads
        urls = [(r, c) for r, c in todo if _URL.match(r) and self._index_key_or_none(r) is None]
        fetched = {r for r, _ in urls}
        for r, c in todo:
            if r not in fetched:
                self.get(r, c)
        if urls:
            bar = tqdm(total=len(urls), desc="probe: references", unit="URL",
                       disable=not self.cfg.progress or len(urls) <= PROGRESS_MIN)
            with ThreadPoolExecutor(max_workers=min(self.cfg.reference_concurrency, len(urls))) as ex:
                for _ in ex.map(lambda rc: self.get(*rc), urls):
                    bar.update(1)
            bar.close()
        log.info("%s", self.summary())

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def summary(self) -> str:
        c = self.counts
        return (f"probe: prompt-file references: {c['fetched']} fetched, {c['cached']} from the cache, "
                f"{c['path']} local files, {c['key']} index keys, {c['failed']} failed"
                + (f", {c['skipped']} URLs not fetched (probe.fetch_references=false)" if c["skipped"] else ""))

    def shown(self, ref: str) -> str:
        """``ref`` as it may be written: a URL without user info/query/fragment, a path without its local root."""
        if _URL.match(ref):
            return redacted_url(ref) or ref
        p = Path(ref).expanduser()
        if p.is_absolute():
            if self.base_dir is not None and p.is_relative_to(self.base_dir):
                return p.relative_to(self.base_dir).as_posix()
            return p.name
        return ref

    def _resolve(self, ref: str) -> Optional[PromptReference]:
        hit = self._index_key(ref)
        if hit is not None:
            im = self.load_index_image(*hit) if self.load_index_image is not None else None
            if im is None:
                raise UnresolvedReference(f"index image {hit[1]}/{hit[0]} could not be read")
            self._count("key")
            return PromptReference(hit, im, SOURCE_KEY)
        if _URL.match(ref):
            if not self.cfg.fetch_references:
                self._count("skipped")
                return None
            return PromptReference((self.shown(ref), ""), self._url_image(ref), SOURCE_URL)
        path = self._local_path(ref)
        im = self._decode(self._read_file(path))
        self._count("path")
        return PromptReference((self.shown(ref), ""), im, SOURCE_PATH)

    def _index_key_or_none(self, ref: str) -> Optional[tuple[str, str]]:
        try:
            return self._index_key(ref)
        except UnresolvedReference:
            return None

    def _index_key(self, ref: str) -> Optional[tuple[str, str]]:
        """(key, shard) when ``ref`` is a key of the index (in one shard) or ``shard/key``."""
        if self.store is None:
            return None
        if self._keys is None:
            with self._lock:
                if self._keys is None:
                    t = self.store.table(columns=["key", "shard"])
                    by_key: dict[str, list[str]] = {}
                    for k, s in zip(t["key"].astype(str), t["shard"].astype(str)):
                        by_key.setdefault(k, []).append(s)
                    self._keys = (by_key, {(k, s) for k, ss in by_key.items() for s in ss})
        by_key, pairs = self._keys
        shards = by_key.get(ref)
        if shards:
            if len(shards) > 1:
                raise UnresolvedReference(f"key {ref!r} is in {len(shards)} shards "
                                          f"({', '.join(sorted(shards)[:3])}...): write it as shard/key")
            return ref, shards[0]
        for i, ch in enumerate(ref):
            if ch == "/" and (ref[i + 1:], ref[:i]) in pairs:
                return ref[i + 1:], ref[:i]
        return None

    def _local_path(self, ref: str) -> Path:
        p = Path(ref).expanduser()
        if p.is_absolute():
            tried = [p]
        else:
            tried = ([self.base_dir / p] if self.base_dir is not None else []) + [Path.cwd() / p]
        for cand in tried:
            if cand.exists():
                return cand
        where = "" if p.is_absolute() else " (looked beside the prompts file and in the current folder)"
        raise UnresolvedReference(f"not an index key, an http(s) URL or an existing file{where}")

    # --- bytes ---------------------------------------------------------------------------------------------
    def _read_file(self, path: Path) -> bytes:
        from fsspec.implementations.local import LocalFileSystem

        from ..io.base import read_bounded

        try:  # stat first: a FIFO or a device is never opened, a file over the cap never read
            return read_bounded(LocalFileSystem(), os.fspath(path), self.cfg.reference_max_bytes)
        except OSError as exc:
            raise UnresolvedReference(f"cannot read the file: {type(exc).__name__}: {exc.strerror or exc}") from None

    def _decode(self, data: bytes) -> Image.Image:
        from ..index.decode import DecodeError, decode_rgb

        try:  # the index's bounds: format allow-list, pixel limit, JPEG scan cap, CPU budget
            return decode_rgb(data, max_bytes=self.cfg.reference_max_bytes)
        except DecodeError as exc:
            raise UnresolvedReference(f"not a decodable image: {exc}") from None

    def cache_path(self, url: str) -> Path:
        return self.cache_dir / hashlib.sha256(url.encode("utf-8")).hexdigest()

    def _url_image(self, url: str) -> Image.Image:
        cached = self.cache_path(url)
        if cached.is_file():
            im = self._decode(self._read_file(cached))
            self._count("cached")
            return im
        data = self._fetch(url)
        im = self._decode(data)
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:  # only bytes that decoded are kept
            Path(tmp).write_bytes(data)
        self._count("fetched")
        return im

    def _session(self) -> requests.Session:
        sess = getattr(self._local, "session", None)
        if sess is None:
            sess = self._local.session = make_session(self.cfg.reference_retries, 0.5)
        return sess

    def _fetch(self, url: str) -> bytes:
        """GET ``url``: one deadline for its redirects and its body (each attempt urllib3 retries gets what is left
        of it), redirects followed by hand (at most ``MAX_REDIRECTS``, http(s) only)."""
        timeout = self.cfg.reference_timeout_s
        deadline = time.monotonic() + timeout
        hops = [origin(url)]
        for _ in range(MAX_REDIRECTS + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                raise HttpError(f"deadline of {timeout}s exceeded (redirects)")
            try:
                resp = self._session().get(url, timeout=left, allow_redirects=False, stream=True,
                                           headers={"Accept": "image/*"})
            except requests.exceptions.RequestException as exc:
                raise transport_error(exc, self.cfg.reference_retries, timeout) from None
            with resp:
                if resp.is_redirect:
                    # the next request is the Location's own URL: user info of this URL goes along only when the
                    # Location is relative to it (same origin); no header carries credentials (none are sent)
                    target = urljoin(url, resp.headers.get("Location", ""))
                    if urlsplit(target).scheme.lower() not in ("http", "https"):
                        raise HttpError(f"redirect to a non-http(s) URL ({urlsplit(target).scheme}:) refused")
                    hops.append(origin(target))
                    url = target
                    continue
                if resp.status_code >= 400:
                    raise HttpError(f"HTTP {resp.status_code} {resp.reason}")
                return read_body(resp, self.cfg.reference_max_bytes, deadline, timeout)
        raise HttpError(f"more than {MAX_REDIRECTS} redirects ({' -> '.join(hops[:3])} ...)")
