"""Shards written by the real img2dataset CLI (from real photos served on 127.0.0.1, plus one URL that
answers 404) are read back exactly by the readers, for the webdataset, parquet and files output formats."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from auditor.io import detect_layout, open_dataset
from auditor.io.download import serve_and_download

pytestmark = pytest.mark.network_loopback

PER_SHARD = 16


@pytest.fixture(scope="module")
def items(imagenet, kodak) -> list[tuple[Path, str]]:
    if len(imagenet) < 34 or len(kodak) < 6:
        pytest.skip("needs the imagenet-256 and kodak photos")
    photos = imagenet[:34] + kodak[:6]  # 34 JPEGs + 6 PNGs (stored under .jpg: re-encoding is off)
    return [(p, f"{p.stem.replace('_', ' ')} — photo {i}") for i, p in enumerate(photos)]


FORMATS = ("webdataset", "parquet", "files")


@pytest.fixture(scope="module")
def built_all(items, tmp_path_factory) -> dict[str, Path]:
    """The three output formats, built concurrently (each img2dataset run spends most of its time starting
    its spawned worker and logger processes)."""
    from concurrent.futures import ThreadPoolExecutor

    outs = {fmt: tmp_path_factory.mktemp(f"i2d-{fmt}") / "out" for fmt in FORMATS}
    with ThreadPoolExecutor(len(FORMATS)) as pool:
        futures = [pool.submit(serve_and_download, items, outs[fmt], output_format=fmt,
                               number_sample_per_shard=PER_SHARD, missing=1, thread_count=4) for fmt in FORMATS]
        for f in futures:
            f.result()
    return outs


@pytest.fixture(params=FORMATS)
def built(request, built_all):
    return request.param, built_all[request.param]


def _item_index(url: str) -> int:
    """serve_and_download serves item i as /<i:06d>_<name>."""
    return int(urllib.parse.unquote(url.rsplit("/", 1)[1]).split("_", 1)[0])


def test_every_downloaded_sample_reads_back(built, items):
    fmt, out = built
    assert detect_layout(out) == fmt
    stats = sorted(out.glob("*_stats.json"))
    assert len(stats) == 3  # 41 rows / 16 per shard
    assert sum(json.loads(p.read_text())["successes"] for p in stats) == len(items)
    reader = open_dataset(out)
    assert [r.id for r in reader.shards()] == ["00000", "00001", "00002"]
    samples = [s for ref in reader.shards() for s in reader.read_shard(ref)]
    ok = [s for s in samples if s.status == "success"]
    bad = [s for s in samples if s.status != "success"]
    assert len(ok) == len(items) and len({(s.shard, s.key) for s in ok}) == len(items)
    seen = set()
    for s in ok:
        i = _item_index(s.url)
        path, caption = items[i]
        seen.add(i)
        assert s.data == path.read_bytes(), f"{fmt}: bytes of {path.name} differ"
        assert s.caption == caption
        assert s.stored_ext == "jpg"
        assert s.key.startswith(s.shard)  # img2dataset keys: shard number then row within the shard
    assert seen == set(range(len(items)))
    pngs = [s for s in ok if items[_item_index(s.url)][0].suffix == ".png"]
    assert len(pngs) == 6 and all(s.data.startswith(b"\x89PNG") for s in pngs)
    assert len(bad) == 1
    failed = bad[0]
    assert failed.status == "failed_to_download" and failed.data is None
    assert "404" in (failed.error or "") and failed.caption == "missing 0"
    assert _item_index(failed.url) == len(items)


def test_get_by_key_matches_the_stream(built, items):
    fmt, out = built
    reader = open_dataset(out)
    refs = reader.shards()
    stream = [s for s in reader.read_shard(refs[-1])]
    for s in stream:
        g = reader.get(s.shard, s.key)
        assert (g.key, g.status, g.data, g.caption, g.url) == (s.key, s.status, s.data, s.caption, s.url)
    with pytest.raises(KeyError):
        reader.get(refs[0].id, "no-such-key")


def test_sidecar_lists_every_row(built, items):
    fmt, out = built
    table = pq.read_table(sorted(out.glob("*.parquet")), columns=["key", "url", "status", "source"])
    assert table.num_rows == len(items) + 1
    statuses = table.column("status").to_pylist()
    assert statuses.count("success") == len(items)
    # save_additional_columns carried the source path through img2dataset
    src = dict(zip(table.column("url").to_pylist(), table.column("source").to_pylist()))
    for url, path in src.items():
        i = _item_index(url)
        if i < len(items):
            assert path == str(items[i][0])
