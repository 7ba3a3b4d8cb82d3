"""Small shared helpers: atomic writes, error records, package versions, caption normalisation."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
import unicodedata
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa



def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


#: a file name's limit in bytes on every common file system (ext4, xfs, btrfs, tmpfs, APFS, NTFS)
NAME_MAX = 255


def bounded_name(name: str, limit: int = 120) -> str:
    """``name`` itself when it is at most ``limit`` UTF-8 bytes, else its first characters + ``~`` + 16 hex digits
    of its blake2b: a unique file name that stays far under :data:`NAME_MAX` whatever suffix is added.

    Example:
        >>> bounded_name("kodak01.png")
        'kodak01.png'
        >>> len(bounded_name("k" * 250).encode())
        120
    """
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return name
    digest = hashlib.blake2b(raw, digest_size=8).hexdigest()
    head = raw[: max(0, limit - 1 - len(digest))].decode("utf-8", "ignore")
    return f"{head}~{digest}"


def _temp_prefix(name: str) -> str:
    """The temporary-name prefix of ``name``: ``.NAME.`` (mkstemp adds 8 characters and ``.tmp``), the name hashed
    when that would pass NAME_MAX (a 250-byte key's ``.png`` would otherwise fail with ENAMETOOLONG on every rerun)."""
    if len(name.encode("utf-8", "surrogateescape")) + 14 <= NAME_MAX:
        return f".{name}."
    return f".{bounded_name(name)}."


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path`` (atomic on POSIX).
    On any exception the temporary file is removed and ``path`` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def remove_temporary_files(folder: str | os.PathLike) -> int:
    """Delete the temporary files :func:`atomic_path` leaves when its process is killed (``.NAME.XXXX.tmp``)
    anywhere under ``folder``; a stage calls this when it starts on its own output folder. Returns how many."""
    n = 0
    root = Path(folder)
    if root.is_dir():
        for p in root.rglob(".*.tmp"):
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_parquet(path: str | os.PathLike, table: pd.DataFrame | pa.Table) -> None:
    """Write a parquet file atomically and deterministically (no pandas index, fixed compression)."""
    # imported here, not at the top: the index's pool workers import this module and never write parquet, and
    # pandas + pyarrow are ~1 s of their start-up (auditor/index/worker.py)
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_npy(path: str | os.PathLike, array) -> None:
    import numpy as np

    from numpy.lib import format as npformat

    arr = np.ascontiguousarray(array)
    if arr.dtype.hasobject:
        raise TypeError("write_npy: object arrays are not written (they would need pickle)")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            # header by numpy, data by the file object: np.save's ndarray.tofile reports a full disk as
            # "N requested and M written" without errno; fh.write raises OSError(ENOSPC), the one-line error
            npformat.write_array_header_1_0(fh, npformat.header_data_from_array_1_0(arr))
            fh.write(memoryview(arr).cast("B") if arr.size else b"")


@dataclass(frozen=True)
class ErrorRecord:
    """One bad sample: never fatal to a run, always recorded in ``errors.parquet``."""

    key: str
    shard: str
    stage: str
    error: str

    ERROR_COLUMNS = ("key", "shard", "stage", "error")


def is_utf8(text: str) -> bool:
    """False for a str holding lone surrogates (a non-UTF-8 file or tar member name decoded with
    ``surrogateescape``, or a ``"\\udc80"`` escape in hostile JSON): such text cannot be stored in parquet."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def utf8_safe(text):
    """``text`` made storable as UTF-8 (None and non-str values are returned as they are): the original bytes
    of a ``surrogateescape``-decoded name are shown backslash-escaped (``caf\\xe9.jpg``), any other lone
    surrogate becomes U+FFFD."""
    if not isinstance(text, str) or is_utf8(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def string_table(rows: list[dict], columns) -> pa.Table:
    """``rows`` as a pyarrow table of string columns ``columns`` (a missing or None value is null, anything else
    its ``str``), built without pandas: the index command writes its error and not-downloaded tables with this, so
    it no longer imports pandas at start-up (pyarrow still does at its first conversion of Python values, which the
    local engine lets happen on a background thread: ``index/engines/local.py``, BENCHMARKS.md §1)."""
    import pyarrow as pa

    data = {c: [None if r.get(c) is None else utf8_safe(str(r[c])) for r in rows] for c in columns}
    return pa.table({c: pa.array(v, pa.string()) for c, v in data.items()})


def errors_table(records: list[ErrorRecord]) -> pa.Table:
    """:func:`errors_frame`'s rows and columns as a pyarrow table (every value a string, as there)."""
    return string_table([{k: str(v) for k, v in asdict(r).items()} for r in records], ErrorRecord.ERROR_COLUMNS)


def errors_frame(records: list[ErrorRecord]) -> pd.DataFrame:
    import pandas as pd

    rows = [{k: utf8_safe(v) for k, v in asdict(r).items()} for r in records]
    return pd.DataFrame(rows, columns=list(ErrorRecord.ERROR_COLUMNS)).astype(str)


PACKAGES = (
    "auditor", "numpy", "pillow", "pandas", "pyarrow", "imagehash", "faiss-cpu", "torch", "open_clip_torch",
    "onnxruntime", "diffusers", "transformers", "img2dataset", "simplejpeg",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (None when absent), looked up once per process (each lookup scans
    site-packages: ~5 ms a package)."""
    return dict(_package_versions(tuple(names)))


@functools.cache
def _package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]", flags=re.UNICODE)


def normalize_caption(caption: str | None) -> str:
    """Normalise a caption for duplicate detection: NFKC, casefold, punctuation dropped, whitespace collapsed."""
    if not caption:
        return ""
    text = unicodedata.normalize("NFKC", caption).casefold()
    text = _PUNCT.sub(" ", text)
    return _WS.sub(" ", text).strip()


def caption_hash(caption: str | None) -> str:
    """Hex digest (16 bytes of blake2b) of the normalised caption; '' for an empty caption."""
    norm = normalize_caption(caption)
    if not norm:
        return ""
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
