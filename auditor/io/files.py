"""img2dataset's ``output_format=files``: one folder per shard, ``NNNNN/<key>.jpg`` + ``<key>.txt`` +
``<key>.json``, with a sidecar ``NNNNN.parquet`` listing every row (failed ones too) beside the folder."""

from __future__ import annotations

import posixpath
from typing import Iterator, Optional

from .base import DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_TEXT_BYTES, IMAGE_EXTS, READ_ERROR, READERS, BoundError, \
    DatasetReader, Sample, ShardRef, read_bounded, read_error, read_sidecar, shard_id, split_key, to_url, url_to_fs
from .webdataset import build_sample, extra_image_errors, failed_sample, sidecar_rows_by_key

_WANTED = set(IMAGE_EXTS) | {"txt", "json"}
#: which image is the sample when a key has several image files (the order ``get`` looks them up in)
_IMAGE_ORDER = ("jpg", "png", "webp") + tuple(e for e in IMAGE_EXTS if e not in ("jpg", "png", "webp"))


def _by_image_order(paths: dict[str, str]) -> dict[str, str]:
    rank = {e: i for i, e in enumerate(_IMAGE_ORDER)}
    return dict(sorted(paths.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def _one_name(name: str) -> bool:
    """True when ``name`` is one path component: no separator, not ``.`` or ``..``, no NUL."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def is_shard_dir_name(name: str) -> bool:
    return name.isdigit()


@READERS.register("files")
class FilesReader(DatasetReader):
    """Reader for img2dataset files output (``root`` = the output folder)."""

    layout = "files"
    random_access = True

    def shards(self) -> list[ShardRef]:
        fs, root = url_to_fs(self.root)
        entries = fs.ls(root, detail=True)
        names = {posixpath.basename(e["name"].rstrip("/")): e for e in entries}
        refs = []
        for name, e in sorted(names.items()):
            if e["type"] != "directory":
                continue
            side = names.get(name + ".parquet")
            if not (is_shard_dir_name(name) or side is not None):
                continue
            refs.append(ShardRef(id=shard_id(name), path=to_url(fs, e["name"].rstrip("/"), self.root),
                                 extra=(to_url(fs, side["name"], self.root) if side else "",)))
        return refs

    def _sidecar(self, shard: ShardRef) -> tuple[list[dict], Optional[Sample]]:
        path = shard.extra[0] if shard.extra else ""
        try:
            return read_sidecar(path), None
        except Exception as exc:  # noqa: BLE001 - a corrupt sidecar must not lose the images
            return [], Sample(key=f"{shard.id}/__sidecar__", shard=shard.id, data=None, status=READ_ERROR,
                              error=f"unreadable sidecar parquet {path}: {type(exc).__name__}: {exc}")

    def _read_members(self, fs, paths: dict[str, str]) -> tuple[dict[str, bytes], Optional[str]]:
        """Each file ``stat``-ed and size-checked before it is read (``read_bounded``): an image over
        ``max_member_bytes``, a caption/JSON over ``max_text_bytes``, or anything but a regular file makes
        the sample a read error; another unreadable caption/JSON is left out, as before."""
        max_image = int(self.options.get("max_member_bytes") or DEFAULT_MAX_MEMBER_BYTES)
        max_text = int(self.options.get("max_text_bytes") or DEFAULT_MAX_TEXT_BYTES)
        members: dict[str, bytes] = {}
        for ext, p in paths.items():
            try:
                members[ext] = read_bounded(fs, p, max_image if ext in IMAGE_EXTS else max_text)
            except OSError as exc:
                if ext in IMAGE_EXTS or isinstance(exc, BoundError):
                    return members, read_error(p, exc)
        return members, None

    def read_shard(self, shard: ShardRef) -> Iterator[Sample]:
        rows, side_err = self._sidecar(shard)
        if side_err is not None:
            yield side_err
        by_key = sidecar_rows_by_key(rows)
        fs, root = url_to_fs(shard.path)
        groups: dict[str, dict[str, str]] = {}
        try:
            listing = fs.ls(root, detail=False)
        except OSError as exc:
            listing = []
            yield Sample(key=f"{shard.id}/__dir__", shard=shard.id, data=None, status=READ_ERROR,
                         error=f"cannot list {shard.path}: {type(exc).__name__}: {exc}")
        for p in sorted(listing):  # sorted: which of two same-key images is the sample must not depend on the fs
            key, ext = split_key(posixpath.basename(p.rstrip("/")))
            if ext in _WANTED and not key.startswith("."):
                groups.setdefault(key, {})[ext] = p
        seen: set[str] = set()
        for key in sorted(groups):
            groups[key] = _by_image_order(groups[key])
            members, err = self._read_members(fs, groups[key])
            seen.add(key)
            if err:
                yield Sample(key=key, shard=shard.id, data=None, status=READ_ERROR, error=err)
                continue
            try:
                yield build_sample(key, shard.id, members, by_key.get(key), False)
            except Exception as exc:  # noqa: BLE001 - one sample's bad metadata is confined to that sample
                yield Sample(key=key, shard=shard.id, data=None, status=READ_ERROR,
                             error=f"unreadable sample: {type(exc).__name__}: {exc}")
            yield from extra_image_errors(key, shard.id, groups[key])
        for r in rows:
            if r.get("status") != "success":
                yield failed_sample(r, shard.id)
            elif r.get("key") not in seen:
                yield Sample(key=r.get("key") or "", shard=shard.id, data=None, caption=r.get("caption"),
                             url=r.get("url"), status=READ_ERROR,
                             error="listed as success in the sidecar parquet but its image file is missing",
                             meta={"source": "sidecar"})

    def get(self, shard: str, key: str) -> Sample:
        # a shard is one folder under the root and a key one file name in it: a "/", ".." or "." (from a hostile
        # run folder's index) would read a file outside the dataset, so it is no sample of it
        if not (_one_name(shard) and _one_name(key)):
            raise KeyError(f"no sample {key!r} in shard {shard!r} of {self.root}")
        fs, root = url_to_fs(self.root)
        name = shard
        if "~" in shard:  # the id of a long folder name (io/base.py shard_id): the folder it stands for
            ref = next((r for r in self.shards() if r.id == shard), None)
            if ref is not None:
                name = posixpath.basename(url_to_fs(ref.path)[1].rstrip("/"))
        folder = posixpath.join(root, name)
        if not fs.isdir(folder):
            raise KeyError(f"no shard {shard!r} in {self.root}")
        side_url = to_url(fs, posixpath.join(root, name + ".parquet"), self.root)
        paths = {}
        for ext in _IMAGE_ORDER:
            p = posixpath.join(folder, f"{key}.{ext}")
            if fs.exists(p):
                paths[ext] = p
                break
        if paths:
            for ext in ("txt", "json"):
                p = posixpath.join(folder, f"{key}.{ext}")
                if fs.exists(p):
                    paths[ext] = p
            side = sidecar_rows_by_key(read_sidecar(side_url)) if ("txt" not in paths or "json" not in paths) else {}
            members, err = self._read_members(fs, paths)
            if err:
                return Sample(key=key, shard=shard, data=None, status=READ_ERROR, error=err)
            return build_sample(key, shard, members, side.get(key), False)
        side = sidecar_rows_by_key(read_sidecar(side_url)).get(key)
        if side is not None:
            if side.get("status") != "success":
                return failed_sample(side, shard)
            return Sample(key=key, shard=shard, data=None, caption=side.get("caption"), url=side.get("url"),
                          status=READ_ERROR, error="listed as success in the sidecar parquet but its image "
                                                   "file is missing")
        raise KeyError(f"no sample {key!r} in shard {shard!r} of {self.root}")
