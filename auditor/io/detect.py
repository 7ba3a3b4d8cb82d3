"""Layout detection and ``open_dataset``.

Rules, first match wins (``root`` is a local path or any fsspec URL):

* a ``.tar`` file, or a folder holding ``*.tar``            -> ``webdataset``
* a folder with ``NNNNN/`` sub-folders beside ``NNNNN.parquet`` sidecars (or numbered sub-folders holding
  ``<key>.json`` files)                                       -> ``files``
* a ``.parquet`` file, or a folder of parquet files with an image-bytes column (``jpg``/``png``/``webp``/...)
                                                              -> ``parquet``
* a folder with image files anywhere below it                 -> ``folder``
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from . import files as _files  # noqa: F401  (registers the reader)
from . import folder as _folder  # noqa: F401
from . import parquet as _parquet  # noqa: F401
from . import webdataset as _webdataset  # noqa: F401
from .base import IMAGE_EXTS, READERS, DatasetReader, find_files, has_protocol, list_dir, url_to_fs
from .parquet import find_image_column
from ..errors import UserError


class LayoutError(UserError, ValueError):
    """No layout matches the files of a dataset root (an empty folder, the wrong folder): a ``ValueError`` for the
    API, and the user's to fix on the command line (one line, exit 2)."""


LAYOUTS = ("webdataset", "parquet", "files", "folder")


def _parquet_has_images(fs, path: str) -> bool:
    try:
        with fs.open(path, "rb") as fh:
            return find_image_column(pq.ParquetFile(fh).schema_arrow) is not None
    except Exception:  # noqa: BLE001 - an unreadable parquet is simply not evidence for the layout
        return False


def _looks_like_files_shard(fs, path: str) -> bool:
    try:
        names = [posixpath.basename(p) for p in fs.ls(path, detail=False)]
    except OSError:
        return False
    exts = {n.rsplit(".", 1)[-1].lower() for n in names if "." in n}
    return "json" in exts and bool(exts & set(IMAGE_EXTS))


def detect_layout(root: str | os.PathLike) -> str:
    """Which of :data:`LAYOUTS` ``root`` is, from the files present. Raises ``FileNotFoundError`` when
    ``root`` does not exist and ``ValueError`` when nothing matches."""
    root = str(root)
    fs, path = url_to_fs(root)
    if not fs.exists(path):
        raise FileNotFoundError(f"dataset root {root} does not exist")
    if fs.isfile(path):
        if path.endswith(".tar"):
            return "webdataset"
        if path.endswith(".parquet"):
            return "parquet"
        raise LayoutError(f"{root} is a file but neither a .tar nor a .parquet shard")
    entries = list_dir(fs, path)
    by_name = {posixpath.basename(e["name"].rstrip("/")): e for e in entries}
    file_names = sorted(n for n, e in by_name.items() if e["type"] != "directory")
    dir_names = sorted(n for n, e in by_name.items() if e["type"] == "directory")
    if any(n.endswith(".tar") for n in file_names):
        return "webdataset"
    parquets = [n for n in file_names if n.endswith(".parquet")]
    stems = {n[: -len(".parquet")] for n in parquets}
    if any(d in stems for d in dir_names):
        return "files"
    numbered = [d for d in dir_names if d.isdigit()]
    if numbered and _looks_like_files_shard(fs, by_name[numbered[0]]["name"]):
        return "files"
    if any(_parquet_has_images(fs, by_name[n]["name"]) for n in parquets[:3]):
        return "parquet"
    for p in find_files(fs, path):
        rel = p[len(path.rstrip("/")) + 1:]
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if "." in rel and rel.rsplit(".", 1)[-1].lower() in IMAGE_EXTS:
            return "folder"
    raise LayoutError(f"cannot tell the dataset layout of {root}: no .tar shards, no img2dataset parquet/files "
                      f"shards and no image files; pass the layout explicitly ({', '.join(LAYOUTS)})")


def open_dataset(root: str | os.PathLike, layout: str = "auto", **options: Any) -> DatasetReader:
    """A reader for ``root``. ``layout="auto"`` detects it; ``options`` are the reader options of
    ``index.reader`` (``captions_file``, ``folder_shard_size``, ``image_column``). Options left at ``None``
    are dropped. Local roots are made absolute, so the reader can be reopened from another directory."""
    root = str(root)
    if not has_protocol(root):
        root = str(Path(root).expanduser().absolute())
    if layout in (None, "", "auto"):
        layout = detect_layout(root)
    cls = READERS.get(layout)
    opts = {k: v for k, v in options.items() if v is not None and k != "layout"}
    return cls(root, **opts)
