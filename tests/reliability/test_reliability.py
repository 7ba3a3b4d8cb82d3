"""Reliability on hostile and broken inputs: the code-made corrupted-image corpus (tests/support/corpus.py) and
layout-level breakage (broken tar, missing .txt/.json members, duplicate keys, non-UTF-8 and 1 MB captions,
null image bytes, NUL characters, dangling symlinks, non-UTF-8 file names), mixed with good real photos in the
same shards of all four layouts (webdataset tar, img2dataset parquet, img2dataset files, plain folder).

Every layout goes through index -> dedup -> report (and the guard on a few corpus images) with 0 crashes, and:

* every bad sample is in ``index/errors.parquet`` with its key, shard, stage and a reason;
* every good sample (real photos and the odd-but-valid corpus images) of the same shards is indexed;
* index rows + errors + not-downloaded rows account for every sample written (nothing is silently dropped).

The dataset builders are in ``tests/support/reliability.py``.
"""

from __future__ import annotations

import io
import json
import os

import pandas as pd
import pyarrow as pa
import pytest

from support.corpus import CORPUS_MAX_PIXELS, make_corrupt_corpus
from support.reliability import BUILDERS, CORPUS_SETS, Expect, build_folder, corpus_config, real_photos

from auditor.config import AuditorConfig


# ------------------------------------------------------------------------------------------------------------
# the tests
# ------------------------------------------------------------------------------------------------------------
def _cli(*argv) -> int:
    from auditor.cli import main

    return main([str(a) for a in argv])




def check_index_against(store, ex: Expect) -> None:
    """Every good sample indexed, every bad one recorded with its reason, nothing unaccounted for."""
    t = store.table()
    err = store.errors()
    ni = store.not_indexed()
    assert list(err.columns) == ["key", "shard", "stage", "error"]
    indexed = set(zip(t["shard"], t["key"]))
    assert ex.good <= indexed, f"good samples not indexed: {sorted(ex.good - indexed)}"
    assert indexed <= ex.good, f"indexed but expected to fail: {sorted(indexed - ex.good)}"
    assert len(t) == len(indexed)  # one row per (shard, key)
    for shard, key, stage, sub in ex.bad:
        rows = err[(err["shard"] == shard) & (err["key"] == key)]
        assert len(rows), f"bad sample {shard}/{key} is not in errors.parquet"
        assert (rows["stage"] == stage).any() and any(sub in e for e in rows["error"]), \
            f"{shard}/{key}: expected a {stage} error mentioning {sub!r}, got {rows[['stage', 'error']].values}"
    assert (err["error"].str.len() > 0).all() and (err["stage"].isin(["read", "decode", "embed"])).all()
    expected_err = {(s, k) for s, k, _, _ in ex.bad}
    assert set(zip(err["shard"], err["key"])) == expected_err, "errors nobody expected"
    assert set(zip(ni["shard"], ni["key"])) == ex.not_indexed
    c = store.info["counts"]
    assert (c["indexed"], c["errors"], c["not_indexed"]) == (len(t), len(err), len(ni))
    assert store.info["complete"]
    caps = dict(zip(zip(t["shard"], t["key"]), t["caption"]))
    for k, cap in ex.captions.items():
        assert caps[k] == cap, f"caption of {k}"
    for col in ("key", "caption", "url"):  # everything stored is valid UTF-8 text
        assert all(v is None or v.encode("utf-8") for v in t[col])


@pytest.mark.parametrize("layout", list(BUILDERS))
def test_corpus_through_index_dedup_report_guard(layout, tmp_path, imagenet, kodak):
    from auditor.guard import Guard
    from auditor.index.store import IndexStore

    data, run = tmp_path / "data", tmp_path / "run"
    ex = BUILDERS[layout](data, real_photos(imagenet, kodak), tmp_path)
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file() and not p.is_symlink()}
    workers = "2" if layout in ("webdataset", "folder") else "0"
    assert _cli("index", data, "--out", run, "--workers", workers, *CORPUS_SETS) == 0
    store = IndexStore(run)
    assert store.info["dataset"]["layout"] == layout  # detected despite the junk
    check_index_against(store, ex)

    assert _cli("dedup", run, *CORPUS_SETS) == 0
    man = pd.read_parquet(run / "dedup" / "manifest.parquet")
    t = store.table()
    assert sorted(zip(man["shard"], man["key"])) == sorted(zip(t["shard"], t["key"]))
    summary = json.loads((run / "dedup" / "summary.json").read_text())
    assert summary["samples"] == len(t)

    html = tmp_path / "report" / "report.html"
    assert _cli("report", run, "--out", html, *CORPUS_SETS) == 0
    rep = json.loads((html.parent / "summary.json").read_text())
    assert rep["index"]["n_errors"] == len(store.errors()) and rep["index"]["n_indexed"] == len(t)
    assert html.stat().st_size > 1000

    # the guard on corpus images: valid ones get a verdict, broken ones an error result, never an exception
    cdir = tmp_path / "_corpus"
    exp = make_corrupt_corpus(cdir)
    names = ["good.jpg", "cmyk.jpg", "animated.gif", "gray16.png", "truncated.jpg", "empty.jpg",
             "bomb_header.png", "html_error_page.jpg"]
    guard = Guard(run, AuditorConfig().report.guard.model_copy(update={"max_pixels": CORPUS_MAX_PIXELS}))
    res = guard.check([cdir / n for n in names])
    for n, r in zip(names, res):
        if exp[n]["ok"]:
            assert r.verdict in ("copy", "near", "ok"), (n, r.error)
        else:
            assert r.verdict == "error" and r.error, n
    # a corpus image that is in the index is found as a copy of itself
    assert res[0].verdict == "copy" and res[0].matches[0].phash_distance == 0

    # the input dataset was only read
    after = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file() and not p.is_symlink()}
    assert after == before


def test_folder_read_by_workers_equals_folder_read_by_the_main_process(tmp_path, imagenet, kodak):
    """With pool workers the local engine leaves a plain folder's files for the workers to read
    (``read_shard_deferred``); the index -- every row, every error message (a dangling symlink, a non-UTF-8
    name, the corrupt corpus) -- is byte-identical to the run that reads every file in the main process."""
    from auditor.index.runner import run_index

    data = tmp_path / "data"
    build_folder(data, real_photos(imagenet, kodak), tmp_path)
    runs = {}
    for workers in (0, 2):
        run_index(data, tmp_path / f"run{workers}", corpus_config(workers=workers, chunk_size=4))
        shards = tmp_path / f"run{workers}" / "index" / "shards"
        runs[workers] = {p.name: p.read_bytes() for p in sorted(shards.iterdir())}
    assert runs[0].keys() == runs[2].keys() and runs[0] == runs[2]
    errors = pd.read_parquet(tmp_path / "run2" / "index" / "errors.parquet")
    dangling = errors[errors["key"] == "dangling.jpg"]
    assert len(dangling) == 1 and dangling["error"].iloc[0].startswith("cannot read dangling.jpg: FileNotFoundError")
