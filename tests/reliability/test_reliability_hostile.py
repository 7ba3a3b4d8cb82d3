"""Hostile folder inputs through the real ``auditor index`` path, in a subprocess bounded by RLIMIT_AS,
RLIMIT_CPU and a timeout: a FIFO named ``x.jpg``, a symlink to ``/dev/zero`` and a 6 GB sparse file must be
recorded as read errors with their keys (never opened / never read), and the real photo beside them indexed."""

from __future__ import annotations

import io
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

PHOTOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "photos"
AS_LIMIT = 4 << 30   # the normal one-photo run peaks at ~150 MB RSS; address space of the venv is larger
CPU_LIMIT = 60


def _photo() -> Path:
    if not PHOTOS.is_dir():
        pytest.skip(f"real photos absent: {PHOTOS}")
    for p in sorted(PHOTOS.rglob("*")):
        if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file():
            return p
    pytest.skip(f"no photo under {PHOTOS}")


def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT, CPU_LIMIT))


def _index(ds: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "auditor", "index", str(ds), "--out", str(out)], env=env,
                          preexec_fn=_limits, capture_output=True, text=True, timeout=180)


def test_fifo_dev_zero_and_sparse_file_are_recorded_not_read(tmp_path):
    photo = _photo()
    ds = tmp_path / "ds"
    ds.mkdir()
    shutil.copy(photo, ds / ("good" + photo.suffix.lower()))
    os.mkfifo(ds / "fifo.jpg")
    os.symlink("/dev/zero", ds / "zero.jpg")
    with open(ds / "sparse.jpg", "wb") as fh:
        fh.truncate(6 << 30)
    res = _index(ds, tmp_path / "run")
    assert res.returncode == 0, res.stderr[-2000:]
    idx = tmp_path / "run" / "index"
    errors = {r["key"]: r for r in pq.read_table(idx / "errors.parquet").to_pylist()}
    assert set(errors) == {"fifo.jpg", "zero.jpg", "sparse.jpg"}
    assert all(r["stage"] == "read" for r in errors.values())
    assert errors["fifo.jpg"]["error"].startswith("not_a_regular_file")
    assert errors["zero.jpg"]["error"].startswith("not_a_regular_file")
    assert errors["sparse.jpg"]["error"].startswith("too_many_bytes")
    keys = set()
    for f in sorted(p for p in (idx / "shards").glob("*.parquet") if p.name.count(".") == 1):
        keys |= set(pq.read_table(f, columns=["key"]).column("key").to_pylist())
    assert keys == {"good" + photo.suffix.lower()}


def test_symlink_and_hardlink_tar_members_are_recorded(tmp_path):
    import tarfile

    photo = _photo()
    ds = tmp_path / "ds"
    ds.mkdir()
    with tarfile.open(ds / "00000.tar", "w") as tf:
        tf.add(photo, "a.jpg")
        for name, kind in (("b.jpg", tarfile.SYMTYPE), ("c.jpg", tarfile.LNKTYPE)):
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = kind, "a.jpg"
            tf.addfile(ti)
        # d.jpg from bytes: tf.add of the same file again writes a hardlink member when the shared photo has
        # st_nlink > 1 (the shared data's files can be hardlinked), and d must be a regular member
        data = photo.read_bytes()
        ti = tarfile.TarInfo("d.jpg")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    res = _index(ds, tmp_path / "run")
    assert res.returncode == 0, res.stderr[-2000:]
    idx = tmp_path / "run" / "index"
    errors = {r["key"]: r["error"] for r in pq.read_table(idx / "errors.parquet").to_pylist()}
    assert set(errors) == {"b", "c"}
    assert all("not a regular file" in e for e in errors.values())
    assert pq.read_table(idx / "shards" / "00000.parquet", columns=["key"]).column("key").to_pylist() == ["a", "d"]
