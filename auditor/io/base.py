"""The reader contract every dataset layout implements.

A dataset is a list of shards; a shard yields :class:`Sample` records in a stable order. Rows that
img2dataset failed to download (``status != "success"``) are yielded too, with ``data=None``, so the index
can list them without indexing them.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

from ..registry import Registry


@dataclass
class Sample:
    key: str                      # img2dataset's key, or the relative path for plain folders
    shard: str                    # shard id, e.g. "00000"
    data: Optional[bytes]         # the stored image bytes, None when the row has no image
    caption: Optional[str] = None
    url: Optional[str] = None
    status: str = "success"       # img2dataset's status; anything else is listed, not indexed
    error: Optional[str] = None   # img2dataset's error_message, or why the reader could not get the bytes
    stored_ext: Optional[str] = None  # the extension the bytes were stored under (jpg, png, webp, ...)
    meta: dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None    # read_shard_deferred: a local file the consumer reads the bytes from (data None)


def read_error(name: str, exc: OSError) -> str:
    """The error text recorded for a file a reader (or a worker, for a deferred sample) could not read."""
    return f"cannot read {name}: {type(exc).__name__}: {exc}"


def read_deferred(sample: Sample, max_bytes: Optional[int] = None) -> tuple[Optional[bytes], Optional[str]]:
    """``(bytes, None)`` of a sample, reading a deferred one's local file, or ``(None, error)`` -- the same
    :func:`read_error` text the folder reader records when it reads the file itself.

    The file is ``stat``-ed first: anything but a regular file (a FIFO, a device, a link to ``/dev/zero``) is
    an error and is never opened, and a file over ``max_bytes`` is an error and is never read."""
    if sample.data is not None or sample.path is None:
        return sample.data, sample.error
    try:
        st = os.stat(sample.path)
        if not stat.S_ISREG(st.st_mode):
            return None, f"not_a_regular_file: {sample.key} is not a regular file (mode {st.st_mode:o}); not read"
        if max_bytes is not None and st.st_size > max_bytes:
            return None, f"too_many_bytes: {st.st_size} bytes > max_bytes={max_bytes}; not read"
        with open(sample.path, "rb") as fh:
            data = read_capped(fh, st.st_size, max_bytes) if max_bytes is not None else fh.read()
        if max_bytes is not None and len(data) > max_bytes:  # the file grew after the stat
            return None, f"too_many_bytes: more than max_bytes={max_bytes}; not read"
        return data, None
    except OSError as exc:
        return None, read_error(sample.key, exc)


@dataclass(frozen=True)
class ShardRef:
    id: str                 # stable shard id used in the run folder (file names, markers)
    path: str               # the shard's main file or folder (fsspec URL or local path)
    extra: tuple = ()       # layout-specific extras (e.g. sidecar parquet path, member list)


# A shard's id names its files in the run folder (``<id>.parquet``, ``<id>.done``, ``<id>.errors.parquet``, their
# atomic-write temp names): an id over this many UTF-8 bytes is a readable prefix + a hash of the whole name, so every
# such file name stays under NAME_MAX (255 bytes) whatever the dataset's shard names (a 240-byte shard name failed
# every run with ENAMETOOLONG). Shorter names are kept as they are, so ordinary run folders do not change.
MAX_SHARD_ID_BYTES = 120


def shard_id(name: str) -> str:
    """The run-folder id of the shard named ``name``: ``name`` itself, or, past :data:`MAX_SHARD_ID_BYTES`, its
    first 80 bytes (whole characters) + ``~`` + 16 hex digits of its SHA-256.

    Example:
        ```python
        shard_id("00000")           # "00000"
        len(shard_id("x" * 240))    # 97
        ```
    """
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_SHARD_ID_BYTES:
        return name
    import hashlib

    prefix = raw[:80].decode("utf-8", "ignore")
    return f"{prefix}~{hashlib.sha256(raw).hexdigest()[:16]}"


class DatasetReader:
    """Base class: subclasses set ``layout`` and implement ``shards`` and ``read_shard``."""

    layout: str = ""
    random_access: bool = False  # True where get(shard, key) reads one sample without scanning its shard

    def __init__(self, root: str, **options: Any):
        self.root = root
        self.options = options

    def shards(self) -> list[ShardRef]:
        raise NotImplementedError

    def read_shard(self, shard: ShardRef) -> Iterator[Sample]:
        raise NotImplementedError

    def read_shard_deferred(self, shard: ShardRef) -> Iterator[Sample]:
        """``read_shard``, except that a reader of local image files may leave a sample's ``data`` None and set
        its ``path``, for the consumer to read with :func:`read_deferred` (the index's pool workers read their
        own files instead of receiving the bytes from the main process). Default: ``read_shard``."""
        return self.read_shard(shard)

    def get(self, shard: str, key: str) -> Sample:
        """Fetch one sample by shard id and key (used by probe/report to show training images)."""
        for ref in self.shards():
            if ref.id == shard:
                for s in self.read_shard(ref):
                    if s.key == key:
                        return s
        raise KeyError(f"no sample {key!r} in shard {shard!r} of {self.root}")

    def get_many(self, shard: str, keys: Iterable[str]) -> dict[str, Sample]:
        """Fetch several samples of one shard (missing keys are absent from the result). Layouts with direct
        access (``random_access``) look each key up; sequential ones (tars) read the shard once."""
        wanted = set(keys)
        out: dict[str, Sample] = {}
        if self.random_access:
            for k in sorted(wanted):
                try:
                    out[k] = self.get(shard, k)
                except KeyError:
                    pass
            return out
        for ref in self.shards():
            if ref.id == shard:
                for s in self.read_shard(ref):
                    if s.key in wanted and s.key not in out:
                        out[s.key] = s
                        if len(out) == len(wanted):
                            break
        return out


READERS: Registry[type[DatasetReader]] = Registry("dataset layout")


# --- shared helpers for the readers (additive to the contract above) ----------------------------------

#: extensions a sample's image may be stored under (lower case, no dot)
IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "avif", "jxl")

#: ``Sample.status`` for rows the reader itself could not read (broken tar, missing file, ...)
READ_ERROR = "error"


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's member-name convention: ``dir/abc.seg.jpg`` -> (``dir/abc``, ``seg.jpg``).

    The key is the directory part plus the base name up to its first dot; the extension is the rest,
    lower-cased. A name without a dot has the extension ``""``."""
    slash = name.rfind("/")
    base = name[slash + 1:]
    dot = base.find(".")
    if dot < 0:
        return name, ""
    return name[: slash + 1] + base[:dot], base[dot + 1:].lower()


def decode_text(data: bytes | None) -> str | None:
    """Caption bytes -> str: UTF-8 with undecodable bytes replaced, BOM and NUL characters dropped."""
    if data is None:
        return None
    text = data.decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\x00", "")


def clean_str(value: Any) -> str | None:
    """A metadata value (from parquet/JSON) -> str or None: NaN/None -> None, bytes decoded, NUL dropped."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_text(bytes(value))
    return str(value).replace("\x00", "")


def url_to_fs(url: str):
    """(filesystem, path) for a local path or any fsspec URL."""
    import fsspec

    return fsspec.core.url_to_fs(str(url))


def is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def find_files(fs, root: str) -> Iterator[str]:
    """Every file under ``root`` as ``fs.find(root, withdirs=False)`` lists it (symlinks followed, dangling
    ones listed as files), lazily and in no particular order. A local root is walked with ``os.scandir``
    (fsspec's local ``find`` stats every entry through several Python layers: ~0.1 ms per file); a directory
    reached twice through symlinks is walked once."""
    if not is_local(fs):
        yield from fs.find(root, withdirs=False)
        return
    import os

    seen: set[tuple[int, int]] = set()
    stack = [root.rstrip("/") or "/"]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                is_dir = e.is_dir()  # follows symlinks; False for a dangling one
            except OSError:
                is_dir = False
            if is_dir:
                stack.append(e.path)
            else:
                yield e.path


def list_dir(fs, path: str) -> list[dict]:
    """``fs.ls(path, detail=True)`` reduced to ``name`` and ``type`` ("directory" or "file"); a local folder is
    read with one ``os.scandir`` instead of a Python ``stat`` call per entry."""
    if not is_local(fs):
        return [{"name": e["name"], "type": e["type"]} for e in fs.ls(path, detail=True)]
    import os

    out = []
    for e in os.scandir(path):
        try:
            is_dir = e.is_dir()
        except OSError:
            is_dir = False
        out.append({"name": e.path, "type": "directory" if is_dir else "file"})
    return out


#: caption (``.txt``) and ``.json`` members/files larger than this are not read; the sample is a read error.
#: 8 MiB rather than 1 MB: a 1,000,000-character caption (stored in full by the suite) is 1.4 MB of UTF-8 in
#: ``.txt`` and 2.25 MB in img2dataset's ``.json``, where each non-ASCII character may take 6 bytes (``\\u00fc``)
DEFAULT_MAX_TEXT_BYTES = 8 << 20
#: image members/files larger than this are not read (a guard against hostile containers)
DEFAULT_MAX_MEMBER_BYTES = 1 << 30
#: compressed containers (a .tar.gz, a parquet column chunk) may expand to at most this many times their
#: stored bytes, or EXPANSION_FLOOR, whichever is larger; beyond it they are treated as broken (a bomb).
#: Tars of JPEG/PNG/WebP and their parquet columns expand ~1x; text columns ~3-5x.
DEFAULT_MAX_EXPANSION = 100
EXPANSION_FLOOR = 256 << 20


class BoundError(OSError):
    """A file a reader refuses to read: not a regular file, or over its size limit."""


def read_capped(fh, size: int, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the open file ``fh``, whose ``stat`` gave ``size``: one read of the stated
    size + 1, and a second read (still bounded by ``limit``) only when the file grew. Not ``fh.read(limit + 1)``:
    CPython allocates the whole requested size first, which made reading a 20 kB photo under a 64 MiB limit cost
    0.10 ms instead of 0.027 ms (measured on the 2-core CI machine: 7 % of fast mode's per-image CPU)."""
    data = fh.read(min(size, limit) + 1)
    if size < len(data) <= limit:
        data += fh.read(limit + 1 - len(data))
    return data


def read_bounded(fs, path: str, limit: int) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them: a local file is ``stat``-ed first (anything but a
    regular file -- a FIFO, a device -- is never opened, and a file over ``limit`` is never read); a remote one
    is sized first. Raises :class:`BoundError` (``not_a_regular_file: ...`` / ``too_many_bytes: ...``)."""
    if is_local(fs):
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise BoundError(f"not_a_regular_file: mode {st.st_mode:o}; not read")
        if st.st_size > limit:
            raise BoundError(f"too_many_bytes: {st.st_size} bytes > {limit}; not read")
        with open(path, "rb") as fh:
            data = read_capped(fh, st.st_size, limit)
    else:
        size = fs.size(path)
        if size is not None and size > limit:
            raise BoundError(f"too_many_bytes: {size} bytes > {limit}; not read")
        data = fs.cat_file(path)
    if len(data) > limit:  # grew after the stat
        raise BoundError(f"too_many_bytes: more than {limit}; not read")
    return data


def cat_file(fs, path: str) -> bytes:
    """``fs.cat_file(path)``; a local file is read with ``open`` (a third of fsspec's per-call overhead)."""
    if is_local(fs):
        with open(path, "rb") as fh:
            return fh.read()
    return fs.cat_file(path)


def has_protocol(url: str) -> bool:
    return "://" in str(url)


def to_url(fs, path: str, like: str) -> str:
    """Give ``path`` (as listed by ``fs``) back its protocol when the dataset root ``like`` had one."""
    return fs.unstrip_protocol(path) if has_protocol(like) else path


def read_sidecar(path: str | None) -> list[dict]:
    """img2dataset's per-shard parquet (metadata only, never the image column) as a list of row dicts
    with keys key/url/caption/status/error_message (missing columns -> None). ``[]`` when absent."""
    if not path:
        return []
    import pyarrow.parquet as pq

    fs, p = url_to_fs(path)
    if not fs.exists(p):
        return []
    with fs.open(p, "rb") as fh:
        pf = pq.ParquetFile(fh)
        names = set(pf.schema_arrow.names)
        wanted = [c for c in ("key", "url", "caption", "status", "error_message") if c in names]
        table = pf.read(columns=wanted) if wanted else None
    if table is None:
        return []
    cols = {c: table.column(c).to_pylist() for c in wanted}
    out = []
    for i in range(table.num_rows):
        out.append({c: clean_str(cols[c][i]) if c in cols else None
                    for c in ("key", "url", "caption", "status", "error_message")})
    return out
