"""The dedup stage end to end on real photos with planted duplicates: index (real runner) -> dedup."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from auditor.dedup.risk import RISK_COLUMNS
from auditor.index.dihedral import hamming_dihedral
from auditor.dedup.runner import MANIFEST_COLUMNS, run_dedup
from support.dedup import (EMBEDDER, cc3m_captions, config, descriptor, index, output_bytes, planted,
                                write_dataset)

COS = "dedup.cosine_threshold=0.95"


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, imagenet, shared_data):
    if len(imagenet) < 30:
        pytest.skip("needs 30 imagenet-256 photos")
    root = tmp_path_factory.mktemp("planted")
    samples, groups = planted(imagenet, cc3m_captions(shared_data, 40))
    write_dataset(root / "data", samples, shard_size=10)
    store = index(root / "data", root / "run")
    summary = run_dedup(root / "run", config(COS))
    return root / "run", store, groups, summary


def _manifest(run):
    return pd.read_parquet(run / "dedup" / "manifest.parquet")


def test_every_planted_group_is_one_cluster_and_nothing_else_merges(planted_run):
    run, store, groups, summary = planted_run
    m = _manifest(run)
    assert list(m.columns) == MANIFEST_COLUMNS
    assert len(m) == len(store.table(columns=["key"])) == 38
    dup = m[m.cluster_size > 1]
    found = {frozenset(g["key"]) for _, g in dup.groupby("cluster_id")}
    assert found == {frozenset(v) for v in groups.values()}
    expected_reason = {"exact_bytes": "exact_bytes", "exact_pixels": "exact_pixels", "reencode": "phash",
                       "resize": "phash", "crop": "phash", "flip": "phash"}
    by_key = m.set_index("key")
    for name, keys in groups.items():
        rows = by_key.loc[sorted(keys)]
        assert rows.cluster_size.eq(len(keys)).all()
        assert rows.is_representative.sum() == 1
        non_rep = rows[~rows.is_representative]
        assert set(non_rep.reason) == {expected_reason[name]}, name
        assert rows[rows.is_representative].reason.eq("").all()
    singles = m[m.cluster_size == 1]
    assert singles.keep.all() and singles.is_representative.all() and singles.reason.eq("").all()
    assert summary["duplicate_clusters"] == len(groups)
    hist = {b["size"]: b["clusters"] for b in summary["cluster_size_histogram"]}
    assert hist["1"] == 24 and hist["2"] == 4 and hist["3-4"] == 2 and sum(hist.values()) == summary["clusters"]
    assert summary["dropped"] == sum(len(v) - 1 for v in groups.values())


def test_similarity_to_representative_per_signal(planted_run):
    run, store, groups, _ = planted_run
    m = _manifest(run)
    t = store.table()
    emb = store.embeddings().astype(np.float64)
    row_of = dict(zip(t.key, t.row))
    for _, g in m[m.cluster_size > 1].groupby("cluster_id"):
        rep = g[g.is_representative].key.iloc[0]
        for key, reason, sim in g[~g.is_representative][["key", "reason", "similarity_to_representative"]].values:
            a, b = t.loc[row_of[key]], t.loc[row_of[rep]]
            if reason in ("exact_bytes", "exact_pixels"):
                assert sim == 1.0
            elif reason == "phash":
                d = bin(int(a.phash) ^ int(b.phash)).count("1")
                dt = int(hamming_dihedral(np.array([a.phash], np.uint64), np.array([a.phash_dihedral], np.uint64),
                                          np.array([b.phash], np.uint64), np.array([b.phash_dihedral], np.uint64))[0])
                linked = min(d if d <= 10 else 99, dt if dt <= 6 else 99)  # as stored, or after a flip/rotation
                assert linked <= 10 and sim == pytest.approx(1 - linked / 64)
            else:
                assert reason == "embedding"
                assert sim == pytest.approx(float(emb[row_of[key]] @ emb[row_of[rep]]), abs=1e-5)
                assert sim >= 0.95


def test_output_schemas(planted_run):
    import pyarrow.parquet as pq

    from auditor.dedup.schema import SCHEMAS

    run = planted_run[0]
    for name, schema in SCHEMAS.items():
        assert pq.read_schema(run / "dedup" / name).remove_metadata() == schema, name


def test_representative_rule_and_keep_lists(planted_run):
    run, store, groups, _ = planted_run
    m = _manifest(run).set_index("key")
    # largest pixel area wins: the original, not its 60 % downscale
    assert m.loc["resize_orig", "is_representative"] and not m.loc["resize_small", "keep"]
    # equal area: lowest key wins
    assert m.loc["exb_a", "is_representative"] and not m.loc["exb_b", "keep"] and not m.loc["exb_c", "keep"]
    assert m.loc["pix_bmp", "is_representative"]  # same pixels everywhere: "pix_bmp" < "pix_jpg" < "pix_png"
    assert (m.keep == m.is_representative).all()
    d = run / "dedup"
    keep = (d / "keep_keys.txt").read_text().splitlines()
    drop = (d / "drop_keys.txt").read_text().splitlines()
    assert keep == sorted(keep) and drop == sorted(drop)
    mm = m.reset_index()
    assert set(keep) == set(mm[mm.keep].shard + "/" + mm[mm.keep].key)
    assert set(drop) == set(mm[~mm.keep].shard + "/" + mm[~mm.keep].key)
    clusters = pd.read_parquet(d / "clusters.parquet")
    assert len(clusters) == mm.cluster_id.nunique() and clusters.cluster_id.tolist() == list(range(len(clusters)))
    reps = mm[mm.is_representative].set_index("cluster_id")
    assert (clusters.set_index("cluster_id").representative_key == reps.key).all()
    assert not clusters.is_placeholder.any()


def test_caption_duplication(planted_run):
    run, _, groups, summary = planted_run
    m = _manifest(run).set_index("key")
    for k in ("capdup_1", "capdup_2", "capdup_3"):
        assert m.loc[k, "caption_dup_count"] == 2 and m.loc[k, "cluster_size"] == 1
    for k in groups["exact_bytes"]:
        assert m.loc[k, "caption_dup_count"] == 2
    assert m.loc["single_09", "caption_dup_count"] == 0
    caps = pd.read_parquet(run / "dedup" / "captions.parquet")
    assert sorted(zip(caps["count"], caps["n_clusters"])) == [(3, 1), (3, 3)]
    clusters = pd.read_parquet(run / "dedup" / "clusters.parquet").set_index("cluster_id")
    assert clusters.loc[m.loc["exb_a", "cluster_id"], "n_captions"] == 1
    assert clusters.loc[m.loc["pix_jpg", "cluster_id"], "n_captions"] == 3
    assert summary["captions"]["captions_on_several_clusters"] == 1


def test_risk_ranking(planted_run):
    run, _, groups, summary = planted_run
    risk = pd.read_parquet(run / "dedup" / "risk.parquet")
    m = _manifest(run).set_index("key")
    assert list(risk.columns) == RISK_COLUMNS
    assert risk["rank"].tolist() == list(range(1, len(risk) + 1))
    # every duplicate cluster plus the three singletons whose caption is duplicated, nothing else
    assert len(risk) == len(groups) + 3
    top = risk.iloc[0]
    # two clusters of 3; the one whose caption is repeated three times ranks first
    assert top.cluster_id == m.loc["exb_a", "cluster_id"]
    assert top.caption == "the famous photo everyone trains on" and top.caption_count == 3
    assert risk.iloc[1].cluster_id == m.loc["pix_jpg", "cluster_id"] and risk.iloc[1].caption_count == 1
    assert risk.cluster_size.tolist() == sorted(risk.cluster_size, reverse=True)
    assert list(risk.score) == sorted(risk.score, reverse=True)
    tail = risk[risk.cluster_size == 1]
    assert set(tail.representative_key) == {"capdup_1", "capdup_2", "capdup_3"}
    assert (tail.caption_count == 3).all()
    assert not risk.is_placeholder.any()
    assert summary["top_risk"][0]["cluster_id"] == top.cluster_id


def test_outputs_identical_across_runs(planted_run, caplog):
    import logging

    run, _, _, summary = planted_run
    before = output_bytes(run)
    state_before = {p.name: p.read_bytes() for p in (run / "dedup" / "state").iterdir()}
    with caplog.at_level(logging.INFO, logger="auditor.dedup.runner"):
        again = run_dedup(run, config(COS))  # state present, no new shard: nothing searched again
    assert "dedup search (incremental): 34 pixel groups, 0 new" in caplog.text
    # a rerun on an unchanged index restates nothing: state/ is byte-identical too (its last_run included)
    assert {p.name: p.read_bytes() for p in (run / "dedup" / "state").iterdir()} == state_before
    assert output_bytes(run) == before
    run_dedup(run, config(COS), full=True)
    assert output_bytes(run) == before
    assert again == summary


def test_search_index_saved_for_later_queries(planted_run):
    from auditor.dedup.search import load_search_index, query_index

    run, store, _, _ = planted_run
    d = run / "dedup"
    ids = pd.read_parquet(d / "search_ids.parquet")
    # one row per distinct decoded picture: 38 samples, exact_bytes (3 -> 1) and exact_pixels (3 -> 1)
    assert len(ids) == 34 and ids.pixel_group.is_unique
    index = load_search_index(d / "embeddings.faiss")
    assert index.ntotal == len(ids) and index.d == EMBEDDER["dim"]
    ph = np.load(d / "phash.npy", allow_pickle=False)
    assert ph.dtype == np.uint64 and len(ph) == len(ids)
    t = store.table()
    q = t[t.key == "flip_mirror"].row.iloc[0]
    sims, nn = query_index(index, store.embeddings()[[q]].astype(np.float32), k=2)
    assert set(ids.key.iloc[nn[0]]) == {"flip_mirror", "flip_orig"}


def test_signals_can_be_switched_off(planted_run, tmp_path):
    run, _, groups, _ = planted_run
    import shutil

    other = tmp_path / "run"
    shutil.copytree(run / "index", other / "index")
    run_dedup(other, config(COS, "dedup.embedding=false"))
    m = _manifest(other).set_index("key")
    # the hashes of the mirrored thumbnail join the mirror image without an embedding
    assert m.loc["flip_mirror", "cluster_size"] == 2 and m.loc["flip_mirror", "reason"] == "phash"
    assert m.loc["flip_mirror", "similarity_to_representative"] >= 1 - 6 / 64
    run_dedup(other, config(COS, "dedup.embedding=false", "dedup.hash_dihedral_max_distance=-1"))
    m = _manifest(other).set_index("key")
    assert m.loc["flip_mirror", "cluster_size"] == 1  # as-stored hashes: a mirror image is 30+ bits away
    assert m.loc["reenc_q50", "cluster_size"] == 2
    assert not (other / "dedup" / "embeddings.faiss").exists()
    run_dedup(other, config(COS, "dedup.embedding=false", "dedup.phash=false", "dedup.exact_pixels=false"))
    m = _manifest(other).set_index("key")
    assert m.loc["exb_b", "reason"] == "exact_bytes" and m.loc["exb_b", "cluster_size"] == 3
    assert (m.loc[sorted(groups["exact_pixels"]), "cluster_size"] == 1).all()
    assert m.loc["reenc_q50", "cluster_size"] == 1


def test_chaining_guard_splits_a_real_blend_chain(tmp_path, imagenet):
    """Eleven blends from one photo to another: each step is within the pHash threshold of the next, the ends
    are ~30 bits apart. Connected components chain them all; the guard must not."""
    from PIL import Image

    from support.dedup import encode, rgb

    a = rgb(imagenet[10]).resize((256, 256))
    b = rgb(imagenet[11]).resize((256, 256))
    samples = [{"key": f"blend_{k:02d}", "data": encode(Image.blend(a, b, k / 10), "PNG"), "caption": f"b{k}",
                "ext": "png"} for k in range(11)]
    write_dataset(tmp_path / "data", samples, shard_size=100)
    store = index(tmp_path / "data", tmp_path / "run", embeddings=False)
    t = store.table()
    ph = t.phash.to_numpy(np.uint64)
    steps = np.bitwise_count(ph[1:] ^ ph[:-1])
    assert steps.max() <= 10 and np.bitwise_count(ph[0] ^ ph[-1]) > 10  # the data really is a chain

    run_dedup(tmp_path / "run", config("dedup.chaining_guard=false"))
    chained = _manifest(tmp_path / "run")
    assert chained.cluster_id.nunique() == 1

    largest = {}
    for links in (0, 3, 5):  # the star rule, and admission through links into the cluster (5: the default)
        run_dedup(tmp_path / "run", config(f"dedup.chain_min_links={links}"))
        m = _manifest(tmp_path / "run").merge(t[["key", "phash"]], on="key")
        largest[links] = int(m.cluster_size.max())
        assert m.cluster_id.nunique() > 1
        ends = m.set_index("key").cluster_id
        assert ends["blend_00"] != ends["blend_10"]  # the drift never joins the two photos
        for _, g in m.groupby("cluster_id"):
            rep = g[g.is_representative]
            assert len(rep) == 1
            d = np.bitwise_count(g.phash.to_numpy(np.uint64) ^ np.uint64(rep.phash.iloc[0]))
            # every member is a near-duplicate of its representative, or within the looser end-to-end bound
            assert d.max() <= (10 if links == 0 else 26)
            assert (g.similarity_to_representative.to_numpy() == 1 - d / 64).all()
    assert largest[5] <= largest[0], largest  # the default drifts no further than the star rule
    summary = json.loads((tmp_path / "run" / "dedup" / "summary.json").read_text())
    assert summary["thresholds"]["chaining_guard"] is True
