"""The names of the index's sample-table columns, in order, importable without pyarrow or pandas: the pool
workers' step (:mod:`auditor.index.worker`) needs them, and a worker that imports pyarrow + pandas starts ~1 s later
(measured: the forkserver's preload went from 1.3 s to 0.4 s of CPU when the worker side stopped importing them).
The typed schema, :data:`auditor.index.store.SAMPLE_SCHEMA`, is built from these names."""

SAMPLE_COLUMN_NAMES = (
    "key", "shard", "caption", "url",
    "sha256",          # of the stored bytes
    "pixel_blake3",    # of the decoded RGB pixels (with the shape)
    "phash", "dhash",  # == int(str(imagehash.phash(img)), 16), int(str(imagehash.dhash(img)), 16)
    "phash_dihedral", "dhash_dihedral",  # the 7 flips and 90-degree rotations (auditor.index.dihedral.DIHEDRAL order)
    "width", "height",
    "format",          # detected from magic bytes: JPEG, PNG, WEBP, GIF, ...
    "stored_ext",      # the extension it was stored under
    "nbytes",
    "caption_hash",    # blake2b of the normalised caption ('' when empty)
)
