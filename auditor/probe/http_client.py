"""The probe's HTTP transport, shared by the ``http`` generator (one JSON POST per image) and the prompt file's
reference images (one GET per URL, :mod:`auditor.probe.prompt_refs`).

- a :mod:`requests` session with urllib3 ``Retry`` (connect errors, read timeouts, HTTP 429 and 5xx; ``Retry-After``
  not obeyed, so a server cannot park the probe; redirects never followed by requests itself) and ``trust_env``
  off: no ``.netrc`` credentials, no environment proxies;
- :func:`read_body`: the body read with ``read1`` against a monotonic deadline and under a byte cap (a per-read
  socket timeout alone never fires on a server trickling 1 byte/s), the declared ``Content-Length`` checked first;
- :func:`origin`, :func:`redacted_url`: what a redirect is compared on, and a URL as it may be written (no user
  info, query or fragment, where API keys and signatures are put);
- :func:`transport_error`: a requests exception after the retries as one :class:`HttpError` with its attempt count.

Example:
    >>> origin("https://Example.com/a?b=1")
    'https://example.com:443'
    >>> redacted_url("https://user:secret@cdn.example.com:8443/i.jpg?sig=abc")
    'https://cdn.example.com:8443/i.jpg'
"""

from __future__ import annotations

import time
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError, ReadTimeoutError
from urllib3.util.retry import Retry

RETRY_STATUS = (429, 500, 502, 503, 504)


class HttpError(Exception):
    """One failed request; ``attempts`` counts urllib3's retries."""

    def __init__(self, msg: str, retry: bool = False, attempts: int = 1):
        super().__init__(msg)
        self.retry = retry
        self.attempts = attempts


def make_session(retries: int, backoff_s: float, pool_maxsize: int = 1) -> requests.Session:
    """A session retrying ``retries`` times on connect errors, read timeouts, 429 and 5xx (backoff
    ``backoff_s * 2**(n-1)``), following no redirect and reading no credentials from the environment."""
    sess = requests.Session()
    sess.trust_env = False  # no .netrc credentials, no environment proxies
    retry = Retry(total=retries, connect=retries, read=retries, status=retries, other=0, redirect=0,
                  status_forcelist=RETRY_STATUS, allowed_methods=None, backoff_factor=backoff_s,
                  raise_on_status=False, respect_retry_after_header=False)
    adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=pool_maxsize)
    sess.mount("http://", adapter)
    sess.mount("https://", adapter)
    return sess


def attempts_of(resp: requests.Response) -> int:
    """How many attempts urllib3 made for ``resp`` (1 + its retries)."""
    return len(resp.raw.retries.history) + 1 if getattr(resp.raw, "retries", None) else 1


def read_body(resp: requests.Response, limit: int, deadline: float, timeout_s: float) -> bytes:
    """The body of a ``stream=True`` response, at most ``limit`` bytes, read before the monotonic ``deadline``."""
    declared = resp.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HttpError(f"response of {declared} bytes is over the {limit}-byte limit")
    chunks, n = [], 0
    while True:
        if time.monotonic() > deadline:
            raise HttpError(f"deadline of {timeout_s}s exceeded while reading the response")
        try:
            chunk = resp.raw.read1(65536)
        except (ReadTimeoutError, TimeoutError) as exc:
            raise HttpError(f"timeout after {timeout_s}s reading the response: {exc}") from None
        if not chunk:
            break
        n += len(chunk)
        if n > limit:
            raise HttpError(f"response is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url`` (default ports filled in, lower case): what a redirect is compared on."""
    u = urlsplit(url)
    port = u.port or {"http": 80, "https": 443}.get(u.scheme.lower())
    return f"{u.scheme.lower()}://{(u.hostname or '').lower()}:{port}"


def redacted_url(url: Optional[str]) -> Optional[str]:
    """``url`` without user info, query or fragment (where API keys are often put)."""
    if not url:
        return url
    u = urlsplit(url)
    host = u.hostname or ""
    if u.port:
        host = f"{host}:{u.port}"
    return urlunsplit((u.scheme, host, u.path, "", ""))


def transport_error(exc: requests.exceptions.RequestException, retries: int, timeout_s: float) -> HttpError:
    """A requests exception after urllib3's retries, as an :class:`HttpError` with its attempt count."""
    reason = exc.args[0] if exc.args else exc
    exhausted = isinstance(reason, MaxRetryError)
    inner = reason.reason if exhausted else reason
    attempts = retries + 1 if exhausted else 1
    timeout = isinstance(inner, (ReadTimeoutError, ConnectTimeoutError, TimeoutError))
    if not isinstance(inner, NewConnectionError) and (timeout or isinstance(exc, requests.exceptions.Timeout)):
        return HttpError(f"timeout after {timeout_s}s: {type(inner).__name__}", attempts=attempts)
    return HttpError(f"connection error: {type(inner).__name__}", attempts=attempts)
