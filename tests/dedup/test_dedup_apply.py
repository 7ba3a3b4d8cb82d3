"""Placeholder clusters, and ``auditor apply-manifest`` (output read back by this package's reader and by
the ``webdataset`` library; refusals to write into the input)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from PIL import Image, ImageDraw

from auditor.cli import main
from auditor.dedup.runner import run_dedup
from support.dedup import cc3m_captions, config, encode, index, write_dataset

PH = "dedup.placeholder_min_cluster=5"


def _not_available_card() -> bytes:
    im = Image.new("RGB", (400, 300), (236, 236, 236))
    d = ImageDraw.Draw(im)
    d.rectangle((150, 90, 250, 170), outline=(180, 180, 180), width=3)
    d.text((110, 200), "This photo is no longer available", fill=(120, 120, 120))
    return encode(im, "PNG")


@pytest.fixture(scope="module")
def ph_run(tmp_path_factory, imagenet, shared_data):
    root = tmp_path_factory.mktemp("placeholders")
    caps = iter(cc3m_captions(shared_data, 60))
    card = _not_available_card()
    icon = encode(Image.open(imagenet[11]).convert("RGB").resize((24, 24)).convert("P"), "GIF")
    pixel = encode(Image.new("P", (1, 1), 0), "GIF")  # a black 1x1 GIF: pHash 0x0
    blank = encode(Image.new("RGB", (300, 300), (255, 255, 255)), "PNG")  # pHash 0x8000000000000000
    photo = imagenet[12].read_bytes()
    s = []
    for i in range(6):  # dead URLs answered with the same card / icon / blank; a real photo posted 6 times
        s.append({"key": f"card_{i}", "data": card, "caption": next(caps), "ext": "png"})
        s.append({"key": f"icon_{i}", "data": icon, "caption": next(caps), "ext": "gif"})
        if i % 2:
            s.append({"key": f"blank_{i}", "data": blank, "caption": next(caps), "ext": "png"})
        else:
            s.append({"key": f"blank_{i}", "data": pixel, "caption": next(caps), "ext": "gif"})
        s.append({"key": f"photo_{i}", "data": photo, "caption": next(caps)})
    for i in range(13, 25):
        s.append({"key": f"single_{i}", "data": imagenet[i].read_bytes(), "caption": next(caps)})
    write_dataset(root / "data", s, shard_size=16)
    index(root / "data", root / "run", embeddings=False)
    summary = run_dedup(root / "run", config(PH))
    return root, summary


def test_placeholder_clusters_flagged_and_left_out_of_risk(ph_run):
    root, summary = ph_run
    d = root / "run" / "dedup"
    m = pd.read_parquet(d / "manifest.parquet").set_index("key")
    c = pd.read_parquet(d / "clusters.parquet").set_index("cluster_id")
    for p in ("card", "icon", "blank", "photo"):  # each kind is one cluster of 6
        assert m.filter(regex=f"^{p}_", axis=0).cluster_id.nunique() == 1
        assert m.loc[f"{p}_0", "cluster_size"] == 6
    why = {p: c.loc[m.loc[f"{p}_0", "cluster_id"], "placeholder_why"] for p in ("card", "icon", "blank", "photo")}
    assert why == {"card": "uniform", "icon": "tiny", "blank": "flat", "photo": ""}
    # blank white 300x300 PNGs and black 1x1 GIFs: one perceptual cluster around the larger blank
    assert m.loc["blank_1", "is_representative"] and m.loc["blank_0", "reason"] == "phash"
    assert c.is_placeholder.sum() == 3 and summary["placeholder_clusters"] == 3
    assert summary["placeholder_samples"] == 18
    risk = pd.read_parquet(d / "risk.parquet")
    assert risk.cluster_id.tolist() == [m.loc["photo_0", "cluster_id"]]  # the real duplicate, nothing else
    assert risk.iloc[0].cluster_size == 6
    # by default a placeholder cluster still keeps its representative ...
    assert m.loc["card_0", "keep"] and not m.loc["card_1", "keep"]


def test_drop_placeholders_and_small_clusters_are_not_placeholders(ph_run, tmp_path):
    root, _ = ph_run
    shutil.copytree(root / "run" / "index", tmp_path / "run" / "index")
    run_dedup(tmp_path / "run", config(PH, "dedup.drop_placeholders=true"))
    m = pd.read_parquet(tmp_path / "run" / "dedup" / "manifest.parquet").set_index("key")
    assert not m.filter(regex="^(card|icon|blank)_", axis=0).keep.any()
    assert m.loc["photo_0", "keep"]
    run_dedup(tmp_path / "run", config("dedup.placeholder_min_cluster=7"))
    c = pd.read_parquet(tmp_path / "run" / "dedup" / "clusters.parquet")
    assert not c.is_placeholder.any()
    risk = pd.read_parquet(tmp_path / "run" / "dedup" / "risk.parquet")
    assert len(risk) == 4


def test_apply_manifest_writes_kept_samples_readable_by_both_readers(ph_run, tmp_path):
    import webdataset as wds

    from auditor.io import open_dataset

    root, summary = ph_run
    out = tmp_path / "dedup_out"
    rc = main(["apply-manifest", str(root / "run"), "--out", str(out), "--shard-size", "7",
               "--set", "dedup.progress=false"])
    assert rc == 0
    m = pd.read_parquet(root / "run" / "dedup" / "manifest.parquet")
    kept = m[m.keep]
    assert len(kept) == summary["kept"] == 12 + 4
    reader = open_dataset(str(out))
    assert reader.layout == "webdataset"
    got = {s.key: s for ref in reader.shards() for s in reader.read_shard(ref)}
    assert set(got) == set(kept.key)
    assert len(reader.shards()) == 3  # 16 samples, 7 per shard
    src = open_dataset(str(root / "data"))
    for key, shard in kept[["key", "shard"]].values:
        orig = src.get(shard, key)
        assert got[key].data == orig.data and got[key].caption == orig.caption and got[key].url == orig.url
        assert got[key].stored_ext == orig.stored_ext
    tars = sorted(str(p) for p in out.glob("*.tar"))
    keys = [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False, empty_check=False)]
    assert sorted(keys) == sorted(kept.key)
    info = json.loads((root / "run" / "dedup" / "apply.json").read_text())
    assert info["written"] == 16 and info["errors"] == 0


def test_apply_manifest_refuses_to_write_into_its_inputs(ph_run, tmp_path):
    from auditor.dedup.apply import apply_manifest

    root, _ = ph_run
    run = root / "run"
    for bad in (root / "data", root / "data" / "sub", run / "index", run / "index" / "x", run, root):
        with pytest.raises(ValueError):
            apply_manifest(run, bad, progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something.txt").write_text("x")
    with pytest.raises(ValueError):
        apply_manifest(run, tmp_path / "full", progress=False)
    assert not (root / "data" / "sub").exists()


def test_apply_manifest_records_samples_changed_since_indexing(ph_run, tmp_path, imagenet):
    from auditor.dedup.apply import apply_manifest
    from auditor.io import open_dataset

    root, _ = ph_run
    shutil.copytree(root / "run", tmp_path / "run")
    info_path = tmp_path / "run" / "index" / "index.json"
    info = json.loads(info_path.read_text())
    info["dataset"]["root"] = str(tmp_path / "data")
    info_path.write_text(json.dumps(info))
    # the dataset as it is now: shard 00000 rewritten with other bytes under the same keys
    src = open_dataset(str(root / "data"))
    shard0 = list(src.read_shard(src.shards()[0]))
    rest = [x for ref in src.shards()[1:] for x in src.read_shard(ref)]
    other = imagenet[40].read_bytes()
    write_dataset(tmp_path / "data", [{"key": x.key, "data": other, "caption": x.caption} for x in shard0],
                  shard_size=1000)
    write_dataset(tmp_path / "data", [{"key": x.key, "data": x.data, "caption": x.caption, "ext": x.stored_ext}
                                      for x in rest], shard_size=16, start_shard=1)
    m = pd.read_parquet(tmp_path / "run" / "dedup" / "manifest.parquet")
    kept0 = set(m[m.keep & (m.shard == "00000")].key)
    assert kept0
    summary = apply_manifest(tmp_path / "run", tmp_path / "out", progress=False)
    errs = pd.read_parquet(tmp_path / "run" / "dedup" / "apply_errors.parquet")
    assert set(errs.key) == kept0 and (errs.stage == "apply").all()
    assert errs.error.str.contains("changed since indexing").all()
    assert summary["written"] == summary["kept"] - len(kept0)
    written = open_dataset(str(tmp_path / "out"))
    assert {x.key for ref in written.shards() for x in written.read_shard(ref)} == set(m[m.keep].key) - kept0


def test_cli_index_dedup_apply_on_a_folder_dataset(tmp_path, imagenet):
    """The three commands a user runs, on a plain image folder (keys are relative paths with dots, so the
    written webdataset rewrites them and keeps the original in the json/parquet)."""
    data = tmp_path / "photos"
    data.mkdir()
    for i in range(6):
        (data / f"p{i}.jpg").write_bytes(imagenet[50 + i].read_bytes())
    (data / "p0_copy.jpg").write_bytes(imagenet[50].read_bytes())
    (data / "p1_reencoded.jpg").write_bytes(encode(Image.open(imagenet[51]).convert("RGB"), "JPEG", quality=55))
    run = tmp_path / "run"
    sets = ["--set", "index.progress=false", "--set", "dedup.progress=false"]
    assert main(["index", str(data), "--out", str(run), "--workers", "0", *sets]) == 0
    assert main(["dedup", str(run), *sets]) == 0
    m = pd.read_parquet(run / "dedup" / "manifest.parquet").set_index("key")
    assert not m.loc["p0_copy.jpg", "keep"] and m.loc["p0_copy.jpg", "reason"] == "exact_bytes"
    assert not m.loc["p1_reencoded.jpg", "keep"] and m.loc["p1_reencoded.jpg", "reason"] == "phash"
    assert m.keep.sum() == 6 and (m.caption_dup_count == 0).all()
    risk = pd.read_parquet(run / "dedup" / "risk.parquet")  # no captions: both clusters listed, prompt ''
    assert len(risk) == 2 and (risk.caption == "").all() and (risk.caption_count == 0).all()
    assert main(["apply-manifest", str(run), "--out", str(tmp_path / "out"), *sets]) == 0
    import pyarrow.parquet as pq

    side = pq.read_table(tmp_path / "out" / "00000.parquet").to_pandas()
    assert sorted(side.original_key) == [f"p{i}.jpg" for i in range(6)]
    assert (side.status == "success").all()
