"""Serving-time guard (package: ``lookup`` = the :class:`Guard`, ``server`` = HTTP, ``cli`` = the command): is a generated image a copy of a training image?

``Guard(run_dir).check(images)`` looks each image up in the run's index and returns the nearest training
images with distances and a verdict, so a model server can refuse or regenerate near-copies:

* **pHash fast path**: the image's 64-bit pHash (computed exactly as the index computed its own) against the
  stored pHashes within ``near_phash_distance`` bits, through an exact multi-index hash
  (:mod:`auditor.dedup.search.mih`: sub-linear, the same answer as a full XOR + popcount scan at that radius).
  Exact and re-encoded copies land within a few bits. Flat images (pixel std below ``min_pixel_std``) skip it:
  every blank image has nearly the same pHash.
* **Embedding path**: the embedder the index was built with, rebuilt from ``index.json`` (same model, same
  preprocessing; a different checkpoint is refused by its SHA-256), queried against the dedup stage's
  ``embeddings.faiss`` (one row per pixel group, ``search_ids.parquet`` maps rows to keys) or, when dedup has
  not run or is stale, an index built in memory from the index embeddings. Catches crops, resizes, colour
  shifts that move pHash.

Verdict: ``copy`` when pHash distance <= ``copy_phash_distance`` or cosine >= ``copy_cosine``; ``near`` with
the looser ``near_*`` thresholds; ``ok`` otherwise; ``error`` when the submitted bytes are not a safely
decodable image. Thresholds live in ``report.guard`` (:class:`auditor.guard.config.GuardConfig`).

``auditor guard RUN_DIR IMAGE...`` checks files; ``auditor guard RUN_DIR --serve`` runs the HTTP service under
waitress from a bounded pool (bound to 127.0.0.1 by default; ``server.py`` lists its bounds): ``POST /check`` with the image bytes as the body answers the JSON verdict,
``GET /healthz`` answers the index size. Bodies over ``max_request_bytes`` get 413 without being read.
"""

from .cli import register, run
from .config import GuardConfig
from .lookup import COPY, ERROR, NEAR, OK, Guard, GuardResult, GuardSetupError, Match
from .server import GuardServer, make_server

__all__ = ["COPY", "ERROR", "NEAR", "OK", "Guard", "GuardConfig", "GuardResult", "GuardServer", "GuardSetupError",
           "Match", "make_server", "register", "run"]
