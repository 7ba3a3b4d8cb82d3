"""The field's pipeline end to end over 127.0.0.1 (issue 17 targets): real img2dataset downloads real photos
(with exact and re-encoded duplicates), auditor indexes and deduplicates them, img2dataset downloads
``keep_urls.parquet`` again and gets exactly the kept samples; and ``apply-manifest`` on the img2dataset
output gives the kept samples' tar members byte for byte."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from auditor.dedup.apply import apply_manifest
from auditor.dedup.runner import run_dedup
from auditor.io import open_dataset
from auditor.io.download import img2dataset_command, start_http_server, stop_process
from support.dedup import config, encode, index

pytestmark = pytest.mark.network_loopback


def _img2dataset(url_list: Path, out: Path, extra_cols: list[str], *extra: str) -> None:
    cmd = img2dataset_command() + [
        "--url_list", str(url_list), "--input_format", "parquet", "--url_col", "url", "--caption_col", "caption",
        "--save_additional_columns", "[" + ",".join(extra_cols) + "]", "--output_format", "webdataset",
        "--output_folder", str(out), "--processes_count", "1", "--thread_count", "4",
        "--number_sample_per_shard", "8", "--encode_format", "jpg", "--image_size", "256", "--resize_mode", "no",
        "--disable_all_reencoding", "True", "--enable_wandb", "False", "--distributor", "multiprocessing",
        "--retries", "0", "--timeout", "10", *extra]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "no_proxy": "127.0.0.1,localhost",
           "NO_PROXY": "127.0.0.1,localhost"}
    res = subprocess.run(cmd, env=env, cwd=out.parent, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def _members(folder: Path) -> dict[str, bytes]:
    out = {}
    for t in sorted(folder.glob("*.tar")):
        with tarfile.open(t) as tf:
            out.update({m.name: tf.extractfile(m).read() for m in tf.getmembers()})
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory, imagenet):
    """18 photos on 127.0.0.1: 12 distinct, 3 exact copies and 3 JPEG q50 re-saves (other URLs)."""
    www = tmp_path_factory.mktemp("www")
    rows = []
    for i in range(12):
        (www / f"p{i}.jpg").write_bytes(imagenet[80 + i].read_bytes())
        rows.append((f"p{i}.jpg", f"photo {i}", f"src{i}", float(i)))
    for i in range(3):
        (www / f"copy{i}.jpg").write_bytes(imagenet[80 + i].read_bytes())
        rows.append((f"copy{i}.jpg", f"copy of photo {i}", f"copy{i}", 20.0 + i))
        (www / f"q50_{i}.jpg").write_bytes(encode(Image.open(imagenet[83 + i]).convert("RGB"), "JPEG", quality=50))
        rows.append((f"q50_{i}.jpg", f"re-save of photo {3 + i}", f"q50_{i}", 30.0 + i))
    proc, port = start_http_server(www)
    try:
        yield www, port, rows
    finally:
        stop_process(proc)


def test_img2dataset_round_trip_gives_exactly_the_kept_samples(served, tmp_path):
    www, port, rows = served
    urls = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [f"http://127.0.0.1:{port}/{n}" for n, *_ in rows],
                             "caption": [c for _, c, *_ in rows], "source": [s for *_, s, _ in rows],
                             "aesthetic": [a for *_, a in rows]}), urls)
    first = tmp_path / "first"
    _img2dataset(urls, first, ["source", "aesthetic"])
    index(first, tmp_path / "run", embeddings=False)
    summary = run_dedup(tmp_path / "run", config())
    m = pd.read_parquet(tmp_path / "run" / "dedup" / "manifest.parquet")
    assert summary["samples"] == 18 and summary["dropped"] == 6  # 3 exact copies + 3 re-saves
    keep_urls = tmp_path / "run" / "dedup" / "keep_urls.parquet"
    ku = pq.read_table(keep_urls)
    assert {"source", "aesthetic"} <= set(ku.column_names) and ku.num_rows == 12
    second = tmp_path / "second"
    # keep_urls.parquet's sha256 lets img2dataset check every download against the indexed bytes
    _img2dataset(keep_urls, second, ["source", "aesthetic"], "--verify_hash", '["sha256","sha256"]')
    again = open_dataset(second)
    got = {s.url: s for ref in again.shards() for s in again.read_shard(ref) if s.status == "success"}
    kept = m[m.keep]
    assert sorted(got) == sorted(kept.url)  # exactly the kept samples, nothing else
    src = open_dataset(first)
    for key, shard, url in kept[["key", "shard", "url"]].itertuples(index=False):
        orig = src.get(shard, key)
        s = got[url]
        assert s.data == orig.data and s.caption == orig.caption
        assert s.meta["json"]["source"] == orig.meta["json"]["source"]
        assert s.meta["json"]["aesthetic"] == orig.meta["json"]["aesthetic"]

    # apply-manifest on the img2dataset output: the kept samples' members (.jpg .txt .json) byte for byte
    out = tmp_path / "applied"
    s = apply_manifest(tmp_path / "run", out, shard_size=5, progress=False)
    assert s["written"] == 12 and s["errors"] == 0
    have, orig = _members(out), _members(first)
    kept_keys = set(kept.key)
    assert have == {n: b for n, b in orig.items() if n.split(".", 1)[0] in kept_keys}
    assert {n.split(".", 1)[1] for n in have} == {"jpg", "txt", "json"}
    side = pd.read_parquet(out / "00000.parquet")
    assert {"source", "aesthetic", "url", "caption"} <= set(side.columns)

    # the keep policy on a carried img2dataset column: keep the highest "aesthetic" (the copies)
    run_dedup(tmp_path / "run", config("dedup.keep=column:aesthetic"))
    m2 = pd.read_parquet(tmp_path / "run" / "dedup" / "manifest.parquet").set_index("url")
    kept_urls = {u.rsplit("/", 1)[1] for u in m2.index[m2.keep]}
    assert {"copy0.jpg", "copy1.jpg", "copy2.jpg", "q50_0.jpg", "q50_1.jpg", "q50_2.jpg"} <= kept_urls
    assert not {"p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg", "p4.jpg", "p5.jpg"} & kept_urls
