"""A plain folder of images (searched recursively). The key is the image's path relative to the root (POSIX
separators); shards are chunks of ``folder_shard_size`` sorted keys, with ids ``00000``, ``00001``, ...

Captions come from a sidecar text file (``photo.txt`` or ``photo.jpg.txt`` beside ``photo.jpg``) or from a
CSV/TSV/parquet ``captions_file`` with a key column (``key``, ``path``, ``file``, ``filename`` or ``image``:
the relative path, or the bare file name) and a caption column (``caption``, ``text``, ``txt``; any case).
"""

from __future__ import annotations

import posixpath
from functools import cached_property
from typing import Iterator, Optional

from .base import DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_TEXT_BYTES, IMAGE_EXTS, READ_ERROR, READERS, BoundError, \
    DatasetReader, Sample, ShardRef, clean_str, decode_text, find_files, has_protocol, is_local, read_bounded, \
    read_error, url_to_fs

KEY_COLUMNS = ("key", "path", "file", "filename", "image", "image_path")
CAPTION_COLUMNS = ("caption", "text", "txt")
DEFAULT_SHARD_SIZE = 10_000


def image_ext(name: str) -> Optional[str]:
    dot = name.rfind(".")
    if dot < 0:
        return None
    ext = name[dot + 1:].lower()
    return ext if ext in IMAGE_EXTS else None


def _pick(columns, wanted) -> Optional[str]:
    lower = {c.lower(): c for c in columns}
    return next((lower[w] for w in wanted if w in lower), None)


def load_captions_file(path: str) -> dict[str, str]:
    """CSV/TSV/parquet -> {key: caption}. Keys are relative POSIX paths or bare file names."""
    import pandas as pd

    fs, p = url_to_fs(path)
    with fs.open(p, "rb") as fh:
        if p.endswith(".parquet"):
            df = pd.read_parquet(fh)
        else:
            sep = "\t" if p.endswith((".tsv", ".tab")) else ","
            df = pd.read_csv(fh, sep=sep, dtype=str, keep_default_na=False, encoding_errors="replace")
    kc, cc = _pick(df.columns, KEY_COLUMNS), _pick(df.columns, CAPTION_COLUMNS)
    if kc is None or cc is None:
        raise ValueError(f"captions file {path} needs a key column ({'|'.join(KEY_COLUMNS)}) and a caption column "
                         f"({'|'.join(CAPTION_COLUMNS)}); it has {', '.join(map(str, df.columns))}")
    out: dict[str, str] = {}
    for k, c in zip(df[kc].tolist(), df[cc].tolist()):
        k = (clean_str(k) or "").replace("\\", "/")
        while k.startswith("./"):
            k = k[2:]
        if k:
            out[k] = clean_str(c)
    return out


@READERS.register("folder")
class FolderReader(DatasetReader):
    """Reader for a plain (recursive) image folder."""

    layout = "folder"
    random_access = True

    @property
    def shard_size(self) -> int:
        return int(self.options.get("folder_shard_size") or DEFAULT_SHARD_SIZE)

    def _fs(self):
        return url_to_fs(self.root)

    def _listing(self) -> tuple[list[str], set[str]]:
        """(sorted relative image paths, set of all relative file paths) under the root, hidden files skipped."""
        fs, root = self._fs()
        root = root.rstrip("/")
        images, allfiles = [], set()
        for p in find_files(fs, root):
            rel = p[len(root) + 1:] if p.startswith(root + "/") else posixpath.relpath(p, root)
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            allfiles.add(rel)
            if image_ext(rel):
                images.append(rel)
        return sorted(images), allfiles

    def shards(self) -> list[ShardRef]:
        images, allfiles = self._listing()
        n = self.shard_size
        width = max(5, len(str(max(0, (len(images) - 1) // n))))
        refs = []
        for i in range(0, len(images), n):
            chunk = images[i:i + n]
            extra = tuple((rel, self._sidecar_name(rel, allfiles) or "") for rel in chunk)
            refs.append(ShardRef(id=f"{i // n:0{width}d}", path=self.root, extra=extra))
        return refs

    @staticmethod
    def _sidecar_candidates(rel: str) -> tuple[str, str]:
        stem = rel[: rel.rfind(".")]
        return stem + ".txt", rel + ".txt"

    def _sidecar_name(self, rel: str, allfiles: set[str]) -> Optional[str]:
        return next((c for c in self._sidecar_candidates(rel) if c in allfiles), None)

    @cached_property
    def captions(self) -> dict[str, str]:
        path = self.options.get("captions_file")
        if not path:
            return {}
        if not has_protocol(path) and not posixpath.isabs(path):
            fs, root = self._fs()
            inside = posixpath.join(root, path)
            if fs.exists(inside):
                path = inside if not has_protocol(self.root) else fs.unstrip_protocol(inside)
        return load_captions_file(path)

    def _caption_from_file(self, rel: str) -> Optional[str]:
        caps = self.captions
        if not caps:
            return None
        if rel in caps:
            return caps[rel]
        return caps.get(posixpath.basename(rel))

    def _sample(self, fs, root: str, shard_id: str, rel: str, sidecar: Optional[str], defer: bool = False) -> Sample:
        path = posixpath.join(root, rel)
        data = None
        if not defer:
            try:
                data = read_bounded(fs, path, int(self.options.get("max_member_bytes") or DEFAULT_MAX_MEMBER_BYTES))
            except OSError as exc:
                return Sample(key=rel, shard=shard_id, data=None, status=READ_ERROR,
                              error=read_error(rel, exc))
        caption, meta = None, {}
        if sidecar:
            try:  # stat-ed and size-checked first: a FIFO or a 300 MB caption is never read
                caption = decode_text(read_bounded(fs, posixpath.join(root, sidecar),
                                                   int(self.options.get("max_text_bytes") or DEFAULT_MAX_TEXT_BYTES)))
                meta["caption_source"] = sidecar
            except BoundError as exc:
                return Sample(key=rel, shard=shard_id, data=None, status=READ_ERROR,
                              error=read_error(sidecar, exc))
            except OSError as exc:
                meta["caption_error"] = f"{type(exc).__name__}: {exc}"
        if caption is None:
            caption = self._caption_from_file(rel)
            if caption is not None:
                meta["caption_source"] = "captions_file"
        return Sample(key=rel, shard=shard_id, data=data, caption=caption, status="success",
                      stored_ext=image_ext(rel), meta=meta, path=path if defer else None)

    def read_shard(self, shard: ShardRef, defer: bool = False) -> Iterator[Sample]:
        fs, root = self._fs()
        root = root.rstrip("/")
        for rel, sidecar in shard.extra:
            yield self._sample(fs, root, shard.id, rel, sidecar or None, defer)

    def read_shard_deferred(self, shard: ShardRef) -> Iterator[Sample]:
        fs, _ = self._fs()
        return self.read_shard(shard, defer=is_local(fs))

    def get(self, shard: str, key: str) -> Sample:
        fs, root = self._fs()
        root = root.rstrip("/")
        if (not image_ext(key) or key.startswith("/") or ".." in key.split("/")  # absolute: join() would drop root
                or not fs.isfile(posixpath.join(root, key))):
            raise KeyError(f"no sample {key!r} in shard {shard!r} of {self.root}")
        sidecar = next((c for c in self._sidecar_candidates(key) if fs.isfile(posixpath.join(root, c))), None)
        return self._sample(fs, root, shard, key, sidecar)
