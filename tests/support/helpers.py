"""Helpers shared by test modules (the tests folder is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import hashlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from auditor.config import AuditorConfig


def index_config(**index) -> AuditorConfig:
    """An AuditorConfig with these index keys (progress bars off)."""
    index.setdefault("progress", False)
    return AuditorConfig.model_validate({"index": index})


def is_tmp(p: Path) -> bool:
    """A temporary file of auditor.utils.atomic_path (``.NAME.XXXX.tmp``)."""
    return p.name.startswith(".") and p.name.endswith(".tmp")


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every final output file under ``root`` by relative path (temporary files left out)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and not is_tmp(p)}


class JsonStubHandler(BaseHTTPRequestHandler):
    """Base of the stub image APIs the tests serve on 127.0.0.1: quiet, and ``_send`` writes a JSON response
    (ignoring a client that already gave up, as in the timeout cases)."""

    def log_message(self, *a):  # quiet
        pass

    def _send(self, code: int, body: bytes):
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out first
            pass
