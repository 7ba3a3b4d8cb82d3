"""Joinable, lossless outputs and the keep policy (issue 17 items 3 and 4) on real photos: the manifest's join
columns, keep_urls.parquet, removal_ids.parquet, carried metadata columns, dedup.keep / protect /
keep_per_cluster, and apply-manifest to every output layout on fsspec URLs, with --drop-against and resume
after a failed write."""

from __future__ import annotations

import errno
import hashlib
import io
import shutil
import tarfile
import uuid

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from auditor.cli import main
from auditor.dedup.runner import run_dedup
from auditor.index.store import IndexStore
from auditor.io.writers import WebDatasetWriter
from support.helpers import tree_digest
from support.dedup import config, encode, index

# photo A stored three times (a0..a2), B twice (b0 and a q50 re-save b1), seven singles
AESTHETIC = {"a0": 5.0, "a1": 7.0, "a2": None, "b0": 4.0, "b1": 6.0}
SOURCE = {"a1": "licensed", "b1": "licensed"}


def _samples(imagenet):
    a, b = imagenet[60].read_bytes(), imagenet[61].read_bytes()
    b1 = encode(Image.open(imagenet[61]).convert("RGB"), "JPEG", quality=50)
    out = [("a0", a), ("b0", b), ("a1", a), ("s0", imagenet[62].read_bytes()), ("a2", a), ("b1", b1)]
    out += [(f"s{i}", imagenet[62 + i].read_bytes()) for i in range(1, 7)]
    return out


def _add_cls_members(tar_path):
    """Rewrite a tar with one more member per sample (``KEY.cls``), as webdataset datasets often carry."""
    with tarfile.open(tar_path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        for m, data in members:
            tf.addfile(m, io.BytesIO(data))
            if m.name.endswith(".txt"):
                extra = tarfile.TarInfo(m.name[:-4] + ".cls")
                extra.size = 2
                tf.addfile(extra, io.BytesIO(b"17"))


def _tar_members(paths) -> dict[str, bytes]:
    out = {}
    for p in paths:
        with tarfile.open(p) as tf:
            for m in tf.getmembers():
                out[m.name] = tf.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, imagenet):
    root = tmp_path_factory.mktemp("interop")
    with WebDatasetWriter(root / "data", shard_size=8) as w:
        for key, data in _samples(imagenet):
            meta = {"aesthetic": AESTHETIC.get(key, 5.5), "source": SOURCE.get(key, "web")}
            w.write(key, data, caption=f"photo {key}", url=f"https://example.org/{key}.jpg", meta=meta)
    _add_cls_members(root / "data" / "00000.tar")
    index(root / "data", root / "run", embeddings=False)
    summary = run_dedup(root / "run", config())
    return root, summary


def _manifest(run_dir):
    return pd.read_parquet(run_dir / "dedup" / "manifest.parquet").set_index("key")


def test_manifest_join_columns_keep_urls_and_removal_ids(run, imagenet):
    root, summary = run
    m = _manifest(root / "run")
    assert summary["kept"] == 9 and summary["dropped"] == 3
    data = dict(_samples(imagenet))
    for key, row in m.iterrows():
        assert row.url == f"https://example.org/{key}.jpg"
        assert row.sha256 == hashlib.sha256(data[key]).hexdigest()
        assert row.caption_hash and row.path is None  # a webdataset has no file per sample
    urls = pq.read_table(root / "run" / "dedup" / "keep_urls.parquet").to_pandas()
    assert list(urls.columns[:3]) == ["url", "caption", "sha256"] and {"aesthetic", "source"} <= set(urls.columns)
    assert sorted(urls.url) == sorted(m[m.keep].url)
    assert (urls.set_index("url").loc["https://example.org/s3.jpg", "caption"]) == "photo s3"
    rem = pd.read_parquet(root / "run" / "dedup" / "removal_ids.parquet")
    assert sorted(rem.id) == sorted(m.index[~m.keep]) == ["a1", "a2", "b1"]
    assert set(rem.reason) == {"exact_bytes", "phash"}


def test_index_carries_metadata_columns(run):
    root, _ = run
    store = IndexStore(root / "run")
    assert store.extra_columns() == ["aesthetic", "source"]
    t = store.table(columns=["key", "aesthetic", "source"]).set_index("key")
    assert t.loc["a1", "aesthetic"] == 7.0 and pd.isna(t.loc["a2", "aesthetic"]) and t.loc["b1", "source"] == "licensed"


@pytest.mark.parametrize("overrides, kept_a, kept_b", [
    ((), {"a0"}, {"b0"}),                                           # largest: the representative
    (("dedup.keep=first",), {"a0"}, {"b0"}),
    (("dedup.keep=column:aesthetic",), {"a1"}, {"b1"}),             # highest first, the null last
    (("dedup.keep=column:aesthetic:asc",), {"a0"}, {"b0"}),
    (("dedup.keep=column:aesthetic", "dedup.keep_per_cluster=2"), {"a0", "a1"}, {"b0", "b1"}),
    (("dedup.protect=[source=licensed]",), {"a0", "a1"}, {"b0", "b1"}),
    (("dedup.keep=column:aesthetic:asc", "dedup.protect=[a2]"), {"a0", "a2"}, {"b0"}),
])
def test_keep_policy(run, tmp_path, overrides, kept_a, kept_b):
    root, _ = run
    shutil.copytree(root / "run" / "index", tmp_path / "run" / "index")
    run_dedup(tmp_path / "run", config(*overrides))
    m = _manifest(tmp_path / "run")
    keep = set(m.index[m.keep])
    assert keep & {"a0", "a1", "a2"} == kept_a and keep & {"b0", "b1"} == kept_b
    assert {f"s{i}" for i in range(7)} <= keep
    # the representative does not move with the policy
    assert m.loc["a0", "is_representative"] and m.loc["b0", "is_representative"]


def test_keep_policy_mistakes_are_one_line(run, tmp_path, capsys):
    root, _ = run
    shutil.copytree(root / "run" / "index", tmp_path / "run" / "index")
    for bad in ("dedup.keep=biggest", "dedup.keep=column:nope", "dedup.keep=column:aesthetic:up"):
        assert main(["dedup", str(tmp_path / "run"), "--set", bad, "--set", "dedup.progress=false"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("auditor: error:"), err


@pytest.mark.parametrize("fmt", ["webdataset", "parquet", "files"])
def test_apply_manifest_is_lossless_in_every_layout(run, fmt):
    from auditor.dedup.apply import apply_manifest
    from auditor.io import open_dataset

    root, _ = run
    out = f"memory://apply-{uuid.uuid4().hex}"
    s = apply_manifest(root / "run", out, shard_size=4, progress=False, output_format=fmt)
    m = _manifest(root / "run")
    kept = list(m.index[m.keep])
    assert s["written"] == len(kept) == 9 and s["errors"] == 0 and s["shards"] == ["00000", "00001", "00002"]
    src = _tar_members(sorted((root / "data").glob("*.tar")))
    got = open_dataset(out, layout=fmt)
    samples = {x.key: x for ref in got.shards() for x in got.read_shard(ref)}
    assert sorted(samples) == sorted(kept)
    for k in kept:
        assert samples[k].data == src[f"{k}.jpg"] and samples[k].caption == f"photo {k}"
        assert samples[k].url == f"https://example.org/{k}.jpg"
        assert samples[k].meta["json"]["aesthetic"] == AESTHETIC.get(k, 5.5)
    if fmt == "webdataset":
        import fsspec

        fs = fsspec.filesystem("memory")
        members = {}
        for t in sorted(fs.glob(out[len("memory://"):] + "/*.tar")):
            with tarfile.open(fileobj=io.BytesIO(fs.cat_file(t))) as tf:
                members.update({mm.name: tf.extractfile(mm).read() for mm in tf.getmembers()})
        expect = {n: b for n, b in src.items() if n.split(".", 1)[0] in kept}
        assert members == expect  # every member (.jpg .json .txt .cls) byte for byte
        assert "s0.cls" in members


def test_apply_manifest_drops_against_overlaps(run, tmp_path, imagenet):
    from auditor.dedup.against import run_against
    from auditor.dedup.apply import apply_manifest

    root, _ = run
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "e.jpg").write_bytes(imagenet[63].read_bytes())  # = s1
    index(tmp_path / "eval", tmp_path / "evalrun", embeddings=False)
    shutil.copytree(root / "run", tmp_path / "run")
    run_against(tmp_path / "run", tmp_path / "evalrun", config())
    keep_all = apply_manifest(tmp_path / "run", tmp_path / "o1", progress=False)
    dropped = apply_manifest(tmp_path / "run", tmp_path / "o2", progress=False, drop_against=[])
    assert keep_all["written"] == 9 and dropped["written"] == 8 and dropped["dropped_against"] == 1
    side = pd.read_parquet(tmp_path / "o2" / "00000.parquet")
    assert "s1" not in set(side.key)


def test_apply_manifest_resumes_after_a_full_disk(run, tmp_path, monkeypatch, capsys):
    from auditor.dedup import apply_writers
    from auditor.dedup.apply import apply_manifest

    root, _ = run
    shutil.copytree(root / "run", tmp_path / "run")
    clean = apply_manifest(tmp_path / "run", tmp_path / "clean", shard_size=3, progress=False)
    real_add, calls = apply_writers.TarWriter.add, []

    def full_disk(self, key, files, record):
        calls.append(key)
        if len(calls) == 5:  # in the second output shard
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(self, key, files, record)

    monkeypatch.setattr(apply_writers.TarWriter, "add", full_disk)
    out = tmp_path / "out"
    rc = main(["apply-manifest", str(tmp_path / "run"), "--out", str(out), "--shard-size", "3",
               "--set", "dedup.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "rerun the same command to resume" in err[0]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # the failed shard's temp file is gone
    assert sorted(p.name for p in out.iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json"]
    monkeypatch.setattr(apply_writers.TarWriter, "add", real_add)
    (out / ".auditor-apply-00001.tar.tmp").write_bytes(b"left by a killed run")
    assert main(["apply-manifest", str(tmp_path / "run"), "--out", str(out), "--shard-size", "3",
                 "--set", "dedup.progress=false"]) == 0
    assert tree_digest(out) == tree_digest(tmp_path / "clean") and clean["written"] == 9
    # another run's output is still refused, on one line
    capsys.readouterr()
    assert main(["apply-manifest", str(tmp_path / "run"), "--out", str(out), "--shard-size", "4",
                 "--set", "dedup.progress=false"]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_folder_manifest_path_is_the_file(tmp_path, imagenet):
    data = tmp_path / "photos"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "x.jpg").write_bytes(imagenet[70].read_bytes())
    (data / "y.jpg").write_bytes(imagenet[70].read_bytes())
    index(data, tmp_path / "run", embeddings=False)
    run_dedup(tmp_path / "run", config())
    m = _manifest(tmp_path / "run")
    for key, row in m.iterrows():
        assert open(row.path, "rb").read() == (data / key).read_bytes()
    assert m.keep.sum() == 1


@pytest.mark.parametrize("carry, expect", [("[aesthetic]", ["aesthetic"]), ("[]", [])])
def test_index_carry_columns_config(run, tmp_path, carry, expect):
    from auditor.index.runner import run_index

    root, _ = run
    run_index(root / "data", tmp_path / "run", config(f"index.carry_columns={carry}", "index.embedder.name=none").index)
    assert IndexStore(tmp_path / "run").extra_columns() == expect


def test_hostile_json_metadata_is_carried_safely(tmp_path, imagenet):
    """A sample JSON with a lone surrogate, a nested value, an empty and a huge field list: indexed, at most
    MAX_CARRIED scalar columns, strings made UTF-8-safe."""
    from auditor.index.shard import MAX_CARRIED

    with WebDatasetWriter(tmp_path / "data", shard_size=8) as w:
        w.write("k0", imagenet[71].read_bytes(), caption="x", meta={"bad": "\ud800", "nested": {"a": 1}, "": 3,
                                                                   **{f"f{i:04d}": i for i in range(500)}})
        w.write("k1", imagenet[72].read_bytes(), caption="y", meta={"bad": 2})
    index(tmp_path / "data", tmp_path / "run", embeddings=False)
    store = IndexStore(tmp_path / "run")
    cols = store.extra_columns()
    assert len(cols) == MAX_CARRIED and "nested" not in cols and "" not in cols
    t = store.table(columns=["key", "bad"]).set_index("key")
    assert t.loc["k0", "bad"] != "\ud800" and str(t.loc["k1", "bad"]) == "2"
