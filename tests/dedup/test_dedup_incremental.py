"""Incremental dedup (new shards only searched against the rest) equals a run from scratch; outputs do not
depend on the index's worker count; cross-dataset matches (--against) through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import ImageOps

from auditor.cli import main
from auditor.dedup.runner import MANIFEST_COLUMNS, run_dedup
from auditor.index.store import IndexStore
from support.dedup import (add_embeddings, cc3m_captions, config, encode, index, output_bytes, planted, rgb,
                                write_dataset)

COS = "dedup.cosine_threshold=0.95"


def _late_samples(imagenet):
    """Samples arriving in later shards: duplicates of earlier samples and of each other."""
    new = rgb(imagenet[30])
    return [
        {"key": "late_exb", "data": imagenet[0].read_bytes(), "caption": "late copy"},                 # exact bytes
        {"key": "late_resize", "data": encode(rgb(imagenet[3]), "JPEG", quality=60), "caption": "x"},   # phash
        {"key": "late_flip09", "data": encode(ImageOps.mirror(rgb(imagenet[9])), "JPEG", quality=90),
         "caption": "mirror"},                                                                        # embedding
        {"key": "late_new_a", "data": imagenet[30].read_bytes(), "caption": "A dog running on the beach"},
        {"key": "late_new_b", "data": encode(new, "PNG"), "caption": "new photo", "ext": "png"},       # pixels
        {"key": "late_single", "data": imagenet[31].read_bytes(), "caption": "unique late caption"},
    ]


@pytest.fixture(scope="module")
def grown(tmp_path_factory, imagenet, shared_data):
    """A dataset indexed and deduplicated in two steps: 20 samples (2 shards), then 24 more (3 shards)."""
    if len(imagenet) < 45:
        pytest.skip("needs 45 imagenet-256 photos")
    root = tmp_path_factory.mktemp("grown")
    samples, groups = planted(imagenet, cc3m_captions(shared_data, 40))
    first, rest = samples[:20], samples[20:] + _late_samples(imagenet)
    write_dataset(root / "data", first, shard_size=10)
    index(root / "data", root / "inc")
    run_dedup(root / "inc", config(COS))
    state1 = json.loads((root / "inc" / "dedup" / "state" / "state.json").read_text())
    write_dataset(root / "data", rest, shard_size=10, start_shard=2)
    index(root / "data", root / "inc")  # the runner skips the two finished shards
    run_dedup(root / "inc", config(COS))
    state2 = json.loads((root / "inc" / "dedup" / "state" / "state.json").read_text())
    return root, state1, state2


def test_incremental_equals_from_scratch(grown):
    root, state1, state2 = grown
    assert state1["last_run"]["mode"] == "full" and len(state1["shards"]) == 2
    assert state2["last_run"]["mode"] == "incremental" and len(state2["shards"]) == 5
    # only the new pixel groups were searched: 44 samples, 20 old rows in 16 old groups; late_exb is an old group
    assert state2["last_run"]["new_groups"] == state2["last_run"]["groups"] - 16
    index(root / "data", root / "scratch")
    run_dedup(root / "scratch", config(COS))
    assert output_bytes(root / "inc") == output_bytes(root / "scratch")
    for name in ("search_ids.parquet", "phash.npy"):
        assert (root / "inc" / "dedup" / name).read_bytes() == (root / "scratch" / "dedup" / name).read_bytes()
    from auditor.dedup.search import load_search_index

    a = load_search_index(root / "inc" / "dedup" / "embeddings.faiss")
    b = load_search_index(root / "scratch" / "dedup" / "embeddings.faiss")
    assert a.ntotal == b.ntotal
    np.testing.assert_array_equal(a.reconstruct_n(0, a.ntotal), b.reconstruct_n(0, b.ntotal))
    # the cross-shard duplicates really were found
    m = pd.read_parquet(root / "inc" / "dedup" / "manifest.parquet").set_index("key")
    assert m.loc["late_exb", "cluster_id"] == m.loc["exb_a", "cluster_id"] and m.loc["late_exb", "reason"] == "exact_bytes"
    assert m.loc["late_resize", "cluster_id"] == m.loc["resize_orig", "cluster_id"]
    assert m.loc["late_flip09", "cluster_id"] == m.loc["single_09", "cluster_id"]
    # same area, so the copy with more stored bytes represents the pair; the mirror image is joined by the hashes
    # of its flipped thumbnail
    nb = IndexStore(root / "inc").table(columns=["key", "nbytes"]).set_index("key").nbytes
    best, other = sorted(["late_flip09", "single_09"], key=lambda k: -nb[k])
    assert m.loc[best, "is_representative"] and m.loc[other, "reason"] == "phash"
    assert m.loc["late_new_b", "cluster_id"] == m.loc["late_new_a", "cluster_id"]
    pair = m.loc[["late_new_a", "late_new_b"]]  # same pixels: the larger file represents, the other is exact_pixels
    assert sorted(pair.reason) == ["", "exact_pixels"]
    assert m.loc["late_new_a", "caption_dup_count"] == 3 and m.loc["capdup_1", "caption_dup_count"] == 3
    assert m.loc["late_single", "cluster_size"] == 1


def test_same_outputs_for_any_index_worker_count(grown):
    root, _, _ = grown
    if not (root / "scratch" / "dedup").exists():
        index(root / "data", root / "scratch")
        run_dedup(root / "scratch", config(COS))
    from auditor.index.runner import run_index

    run_index(root / "data", root / "w2", config(workers=2))
    add_embeddings(root / "w2")
    run_dedup(root / "w2", config(COS))
    assert output_bytes(root / "w2") == output_bytes(root / "scratch")


def test_changed_config_or_rewritten_shard_searches_again(grown, tmp_path):
    root, _, _ = grown
    import shutil

    shutil.copytree(root / "inc", tmp_path / "run")
    run = tmp_path / "run"
    run_dedup(run, config("dedup.cosine_threshold=0.96"))
    assert json.loads((run / "dedup" / "state" / "state.json").read_text())["last_run"]["mode"] == "full"
    # a shard parquet rewritten behind our back (e.g. the index rebuilt) invalidates the stored search
    shard = run / "index" / "shards" / "00001.parquet"
    t = pd.read_parquet(shard)
    t.to_parquet(shard, compression="gzip")
    run_dedup(run, config("dedup.cosine_threshold=0.96"))
    assert json.loads((run / "dedup" / "state" / "state.json").read_text())["last_run"]["mode"] == "full"


def test_against_another_run_via_cli(grown, tmp_path, imagenet, capsys):
    root, _, _ = grown
    train = root / "inc"
    ev = [
        {"key": "ev_reenc", "data": encode(rgb(imagenet[20]), "JPEG", quality=50), "caption": "e1"},   # single_20
        {"key": "ev_bytes", "data": imagenet[4].read_bytes(), "caption": "e2"},                        # crop_orig
        {"key": "ev_flip", "data": encode(ImageOps.mirror(rgb(imagenet[21])), "JPEG", quality=92), "caption": "e3"},
        {"key": "ev_pixels", "data": encode(rgb(imagenet[22]), "PNG"), "caption": "e4", "ext": "png"},  # single_22
    ] + [{"key": f"ev_other_{i}", "data": imagenet[i].read_bytes(), "caption": f"o{i}"} for i in range(40, 45)]
    write_dataset(tmp_path / "evalset", ev, shard_size=100)
    index(tmp_path / "evalset", tmp_path / "evalrun")
    rc = main(["dedup", str(train), "--against", str(tmp_path / "evalrun"), "--set", COS,
               "--set", "dedup.progress=false"])
    assert rc == 0
    assert "samples duplicate samples of" in capsys.readouterr().out
    out = pd.read_parquet(train / "dedup" / "against_evalrun.parquet")
    assert list(out.columns[:len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    got = {k: (mk, r) for k, mk, r in out[["key", "matched_key", "match_reason"]].values}
    assert got == {
        "single_20": ("ev_reenc", "phash"),
        "crop_orig": ("ev_bytes", "exact_bytes"),
        "crop_small": ("ev_bytes", "phash"),   # the training set's own near-copy of that photo
        "single_21": ("ev_flip", "phash"),      # mirrored: found by the flip-invariant hash
        "single_22": ("ev_pixels", "exact_pixels"),
    }
    assert (out.matched_run == "evalrun").all() and (out.matched_shard == "00000").all()
    assert out.set_index("key").loc["crop_orig", "similarity"] == 1.0
    info = json.loads((train / "dedup" / "against_evalrun.json").read_text())
    assert info["matched_samples"] == 5 and info["embeddings_compared"] is True
    assert main(["dedup", str(train), "--against", str(train), "--set", "dedup.progress=false"]) == 1


def test_incremental_when_new_shards_sort_before_old_ones(tmp_path, imagenet, shared_data):
    """Search state is keyed by pixel hash, not row number, so shards arriving 'in front' are handled."""
    samples, _ = planted(imagenet, cc3m_captions(shared_data, 40))
    write_dataset(tmp_path / "data", samples[20:], shard_size=10, start_shard=2)
    index(tmp_path / "data", tmp_path / "inc")
    run_dedup(tmp_path / "inc", config(COS))
    write_dataset(tmp_path / "data", samples[:20] + _late_samples(imagenet)[:2], shard_size=11)
    index(tmp_path / "data", tmp_path / "inc")
    run_dedup(tmp_path / "inc", config(COS))
    state = json.loads((tmp_path / "inc" / "dedup" / "state" / "state.json").read_text())
    assert state["last_run"]["mode"] == "incremental"
    index(tmp_path / "data", tmp_path / "scratch")
    run_dedup(tmp_path / "scratch", config(COS))
    assert output_bytes(tmp_path / "inc") == output_bytes(tmp_path / "scratch")
