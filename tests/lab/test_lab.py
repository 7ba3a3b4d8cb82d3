"""The memorisation lab: CLIP tokenizer parity, planted dataset, training plumbing, and (slow) the full demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from auditor.lab.config import LabConfig
from auditor.lab.dataset import build_dataset, folder_sources, skimage_sources
from auditor.lab.train import tiled_l2, to_training_array


def test_tokenizer_matches_open_clip_on_real_captions(shared_data, tmp_path):
    import open_clip

    from auditor.lab.tokenizer import VOCAB_SIZE, build_clip_tokenizer

    tok = build_clip_tokenizer(tmp_path / "tok")
    assert len(tok) == VOCAB_SIZE
    lines = (shared_data / "captions" / "cc3m_validation.tsv").read_text(encoding="utf-8").splitlines()
    caps = [ln.split("\t")[0] for ln in lines[:3000]]
    caps += ["Naïve café — 3:45pm, it's 100% OK!", "A" * 400]  # accents, punctuation, digits, truncation
    ref = open_clip.tokenize(caps)  # [N, 77], zero padded
    ours = tok(caps, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    for i in range(len(caps)):
        r = ref[i].numpy()
        n = int((r != 0).sum())
        assert ours[i, :n].tolist() == r[:n].tolist(), caps[i]
        assert (ours[i, n:] == 49407).all()  # SD pads with <|endoftext|>
    # round trip through save_pretrained, as the pipeline folder stores it
    tok.save_pretrained(tmp_path / "saved")
    from transformers import CLIPTokenizer

    again = CLIPTokenizer.from_pretrained(tmp_path / "saved")
    assert again(caps[:50]).input_ids == tok(caps[:50]).input_ids


def test_planted_dataset_groups_copies_and_captions(tmp_path):
    src = skimage_sources(12, 3, seed=0, max_side=256)
    assert len({s.name for s in src}) == 12 and len({s.caption for s in src}) == 12
    df = build_dataset(src, [20, 5, 2], tmp_path, seed=0, variant_caption_rate=0.25)
    assert len(df) == 20 + 5 + 2 + 9
    counts = df.groupby("group").size()
    assert counts[0] == 20 and counts[1] == 5 and counts[2] == 2 and (counts[3:] == 1).all()
    assert (df["copy_count"] == df["group"].map(counts)).all()
    # shuffled: the 20 copies are not one block
    pos = np.flatnonzero(df["group"].to_numpy() == 0)
    assert pos.max() - pos.min() > 20
    # copies are transformed (different bytes), but stay close to the original
    g0 = df[df["group"] == 0].sort_values("copy_index")
    blobs = [(tmp_path / "images" / f).read_bytes() for f in g0["file"]]
    assert len(set(blobs)) == len(blobs)
    ref = to_training_array(Image.open(tmp_path / "images" / g0["file"].iloc[0]), 32)
    d = [tiled_l2(to_training_array(Image.open(tmp_path / "images" / f), 32), ref) for f in g0["file"].iloc[1:]]
    assert 0 < min(d) and max(d) < 0.15 and np.median(d) < 0.08, d
    # most copies keep the main caption, some carry a variant
    assert 0.5 < g0["is_main_caption"].mean() < 1.0
    # the table is on disk and deterministic for the seed
    again = build_dataset(src, [20, 5, 2], tmp_path / "again", seed=0, variant_caption_rate=0.25)
    pd.testing.assert_frame_equal(again, pd.read_parquet(tmp_path / "planted.parquet"))


def test_folder_sources_with_real_captions(shared_data, kodak):
    src = folder_sources(shared_data / "photos" / "kodak", 6, seed=1,
                         captions_file=str(shared_data / "captions" / "cc3m_validation.tsv"), max_side=96)
    assert len(src) == 6 and all(max(s.image.size) == 96 for s in src)
    assert len({s.caption for s in src}) == 6


def test_tiled_l2():
    rng = np.random.default_rng(0)
    a = rng.random((32, 32, 3)).astype(np.float32)
    assert tiled_l2(a, a) == 0
    b = a.copy()
    b[:8, :8] = 1 - b[:8, :8]  # one tile destroyed: the max over tiles sees it
    assert tiled_l2(a, b) > 0.3
    assert tiled_l2(a, np.clip(a + 0.02, 0, 1)) < 0.03


def test_lab_plumbing_writes_a_loadable_pipeline(tmp_path):
    """A tiny lab run (no download, a handful of steps) writes a StableDiffusionPipeline that loads back with
    DiffusionPipeline.from_pretrained and generates; the same seed gives the same weights."""
    import torch
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    from auditor.lab.demo import run_lab

    def cfg(out):
        return LabConfig(out_dir=str(out), copy_counts=[6, 2], singletons=4, download=False, progress=False,
                         vae_steps=3, train_steps=4, batch_size=4, eval_generations=1, eval_steps=2, max_side=64)

    s = run_lab(cfg(tmp_path / "a"), stages=False)
    assert s["dataset"]["images"] == 12
    assert set(s["stage_seconds"]) >= {"dataset", "load", "train", "quick_eval"}
    assert s["quick_eval"]["by_copy_count"][0]["copy_count"] == 6
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "a" / "model")
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.tokenizer("a cat").input_ids == [49406, 320, 2368, 49407]
    img = pipe("a photo of a cat", num_inference_steps=2, guidance_scale=2.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 32, 32, 3) and np.isfinite(img).all()
    stats = json.loads((tmp_path / "a" / "model" / "lab_training.json").read_text())
    assert stats["vae"]["scaling_factor"] > 0

    run_lab(cfg(tmp_path / "b"), stages=False)
    pb = DiffusionPipeline.from_pretrained(tmp_path / "b" / "model")
    for (na, a), (nb, b) in zip(pipe.unet.state_dict().items(), pb.unet.state_dict().items()):
        assert na == nb and torch.equal(a, b), na


def test_demo_refuses_the_package_folder():
    from auditor.lab.demo import run_lab

    import auditor

    with pytest.raises(ValueError, match="package"):
        run_lab(LabConfig(out_dir=str(Path(auditor.__file__).parent / "demo-out")), stages=False)


@pytest.mark.slow
@pytest.mark.network_loopback
def test_full_demo_extracts_the_most_duplicated_images(tmp_path):
    """The README's command exactly as a user types it, ``auditor demo`` (the console script, no arguments) from a
    fresh folder that is not the checkout: planted dataset -> img2dataset -> train -> index -> dedup -> probe ->
    report in ./auditor-demo. The most duplicated group comes back as a copy, singletons do not (Carlini et al.
    2023's shape)."""
    import os
    import subprocess
    import sys

    script = Path(sys.executable).parent / "auditor"
    if not script.exists():
        pytest.skip(f"the auditor console script is not installed beside {sys.executable}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(script), "demo"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    out = tmp_path / "auditor-demo"
    assert "auditor probe verdicts by planted copy count" in proc.stdout
    assert f"Report: {out / 'report.html'}" in proc.stdout
    summary = json.loads((out / "lab.json").read_text())
    quick = {r["copy_count"]: r for r in summary["quick_eval"]["by_copy_count"]}
    top = max(quick)
    assert quick[top]["extracted"] == quick[top]["groups"]
    assert quick[1]["extracted"] == 0
    probe = {r["copy_count"]: r for r in summary["probe_by_copy_count"]}
    assert probe[top]["extracted"] >= 1
    assert probe.get(1, {"extracted": 0})["extracted"] == 0
    assert Path(summary["report"]).is_file() and Path(summary["report"]).parent == out
    assert (out / "dataset").is_dir() and any((out / "dataset").glob("*.tar"))
