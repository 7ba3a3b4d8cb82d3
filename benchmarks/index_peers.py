"""Worker-side functions of ``bench_index.py``'s decode-only limit. They live in an importable module (not the
script) because the index pool's workers start with a bare ``__main__`` (``auditor/index/engines/local.py``)."""

from __future__ import annotations


def decode_files(paths: list[str], mode: str = "exact") -> int:
    """Read and decode each file with the index's own decoder (``decode_for_index``, or ``decode_reduced`` for
    ``hash_mode: fast``), nothing else: no hashing, no thumbnails, no IPC of results beyond a count."""
    from auditor.index.decode import decode_for_index
    from auditor.index.decode_fast import decode_reduced, fast_min_side

    side = fast_min_side()
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        dec = decode_reduced(data, side) if mode == "fast" else decode_for_index(data)
        n += dec.rgb.shape[0] > 0
    return n
