"""Probe stage end to end: the white-box score against a direct UNet computation, the tiny diffusers pipeline
through `auditor probe` (plumbing, exact UNet-evaluation counts, provenance, resume), and a "memorizing model"
(a python callable that returns a training photo for one caption) through detection, verdicts and evidence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from support.tiny_pipeline import save_tiny_pipeline  # noqa: E402

from auditor.probe.config import ProbeConfig  # noqa: E402
from auditor.utils import file_sha256, write_parquet  # noqa: E402

MEMO = "the lighthouse at dawn, poster print"
PLAIN = "a bowl of fruit on a wooden table"
BOOM = "explode this caption please"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd")


@pytest.fixture(scope="module")
def indexed_run(tmp_path_factory, kodak):
    """An indexed folder of real photos + dedup outputs written as fixtures (the dedup contract)."""
    from auditor.config import load_config
    from auditor.index.runner import run_index

    base = tmp_path_factory.mktemp("probe")
    data = base / "data"
    data.mkdir()
    names = [p.name for p in kodak[:7]]
    for p in kodak[:7]:
        (data / p.name).write_bytes(p.read_bytes())
    Image.open(kodak[0]).convert("RGB").save(data / "copy_of_01.jpg", quality=80)
    caps = {names[0]: MEMO, "copy_of_01.jpg": MEMO, names[1]: PLAIN, names[2]: BOOM}
    singles = ["a red car parked by the road", "two people walking a dog", "an old wooden boat", "mountains in fog"]
    for n, c in zip(names[3:], singles):
        caps[n] = c
    pd.DataFrame({"key": list(caps), "caption": list(caps.values())}).to_csv(base / "captions.csv", index=False)
    run = base / "run"
    cfg = load_config(overrides=["index.workers=0", "index.progress=false",
                                 f"index.reader.captions_file={base / 'captions.csv'}"])
    store = run_index(str(data), run, cfg)
    t = store.table(columns=["key", "shard"])
    shard = {k: s for k, s in zip(t["key"], t["shard"])}
    keys = list(caps)
    cluster = {k: i for i, k in enumerate(keys)}
    cluster["copy_of_01.jpg"] = cluster[names[0]]
    size = {k: sum(1 for v in cluster.values() if v == cluster[k]) for k in keys}
    write_parquet(run / "dedup" / "manifest.parquet", pd.DataFrame({
        "key": keys, "shard": [shard[k] for k in keys], "cluster_id": [cluster[k] for k in keys],
        "cluster_size": [size[k] for k in keys], "is_representative": [k != "copy_of_01.jpg" for k in keys],
        "keep": [k != "copy_of_01.jpg" for k in keys], "reason": ["" if k != "copy_of_01.jpg" else "duplicate" for k in keys],
        "similarity_to_representative": [1.0 if k != "copy_of_01.jpg" else 0.97 for k in keys],
        "caption_dup_count": [2 if caps[k] == MEMO else 1 for k in keys]}))
    risk = [(MEMO, names[0], 2, False), (PLAIN, names[1], 1, False), ("placeholder image", names[6], 1, True),
            (BOOM, names[2], 1, False)]
    write_parquet(run / "dedup" / "risk.parquet", pd.DataFrame({
        "rank": range(1, len(risk) + 1), "cluster_id": [cluster[k] for _, k, _, _ in risk],
        "cluster_size": [s for _, _, s, _ in risk], "caption": [c for c, _, _, _ in risk],
        "caption_count": [2, 1, 1, 1], "n_captions": [1, 1, 1, 1],
        "representative_key": [k for _, k, _, _ in risk], "representative_shard": [shard[k] for _, k, _, _ in risk],
        "score": [4.0, 1.0, 0.9, 0.5], "is_placeholder": [p for _, _, _, p in risk]}))
    return run, data, names


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "probe", ignore_errors=True)
    return dst


# --- white-box score vs a direct computation -------------------------------------------------------------------
def test_whitebox_score_matches_direct_unet_computation(tiny_model):
    import torch

    from auditor.probe.generators.diffusers_gen import DiffusersGenerator

    cfg = ProbeConfig(model=str(tiny_model), steps=10, diffusers={"device": "cpu"})
    gen = DiffusersGenerator(cfg)
    wb = gen.whitebox()
    assert wb is not None and (wb.height, wb.width) == (64, 64)
    prompts, seeds = ["a photo of a cat", "an astronaut riding a horse"], [3, 11]
    scores, evals = wb.scores(prompts, seeds, n_steps=1)
    assert evals == 2 * len(prompts) * len(seeds)

    pipe = gen.pipe
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(10)
    t = sched.timesteps[0]
    for p, score in zip(prompts, scores):
        cond, uncond = pipe.encode_prompt(p, "cpu", 1, True, negative_prompt=None)
        direct = []
        for s in seeds:
            lat = torch.randn((1, 4, 32, 32), generator=torch.Generator().manual_seed(s)) * sched.init_noise_sigma
            x = sched.scale_model_input(lat, t)
            with torch.no_grad():
                e_c = pipe.unet(x, t, encoder_hidden_states=cond).sample
                e_u = pipe.unet(x, t, encoder_hidden_states=uncond).sample
            direct.append(float(torch.linalg.vector_norm(e_c - e_u)))
        assert score == pytest.approx(np.mean(direct), rel=1e-4)
    assert scores[0] != pytest.approx(scores[1])
    # more steps: still finite and counted exactly (2 per latent per step)
    s2, ev2 = wb.scores(prompts[:1], seeds[:1], n_steps=3)
    assert ev2 == 6 and np.isfinite(s2).all()
    gen.close()


# --- the tiny diffusers pipeline through the CLI -----------------------------------------------------------------
def test_cli_probe_with_tiny_diffusers_pipeline(indexed_run, tiny_model, tmp_path):
    from auditor.cli import main

    run = _copy_run(indexed_run[0], tmp_path / "run")
    args = ["probe", str(run), "--model", str(tiny_model), "--top-n", "3", "--no-progress",
            "--set", "probe.steps=2", "--set", "probe.whitebox_seeds=2", "--set", "probe.calibration_captions=3",
            "--set", "probe.confirm_generations=3", "--set", "probe.diffusers.device=cpu",
            "--set", "probe.diffusers.scheduler=DDIMScheduler", "--set", "probe.whitebox_fpr=0.5",
            "--set", "probe.variants=[exact, prefix]"]
    assert main(args) == 0
    out = run / "probe"
    res = pd.read_parquet(out / "results.parquet")
    from auditor.probe.runner import GENERATION_COLUMNS, RESULT_COLUMNS

    assert list(res.columns) == RESULT_COLUMNS
    assert "placeholder image" not in set(res["caption"])  # placeholders skipped by default
    assert set(res["caption"]) == {MEMO, PLAIN, BOOM}
    assert set(res["variant"]) == {"exact", "prefix50"}
    # the white-box screen orders the confirm tier and gates nothing (probe.whitebox_gate is off): all confirmed
    assert res["whitebox_score"].notna().all() and (res["tier"] == "confirm").all()
    cal = json.loads((out / "calibration.json").read_text())
    assert len(cal["captions"]) == 3 and cal["whitebox_threshold"] is not None
    assert (res["whitebox_flag"] == (res["whitebox_score"] > cal["whitebox_threshold"])).all()
    # exact UNet-evaluation accounting: 2 per seed for the first-step screen + 2 per step per image (CFG)
    for _, r in res.iterrows():
        expect = 2 * 2 * 1 + r["n_generations"] * 2 * 2
        assert r["unet_evals"] == expect
        assert r["n_generations"] == 3 and list(r["seeds"]) == [0, 1, 2]
    gens = pd.read_parquet(out / "generations.parquet")
    assert list(gens.columns) == GENERATION_COLUMNS
    assert len(gens) == res["n_generations"].sum()
    for p in gens["path"]:
        im = Image.open(run / p)
        assert im.size == (64, 64)
    prov = json.loads((out / "provenance.json").read_text())
    g = prov["generator"]
    assert g["scheduler"] == "DDIMScheduler" and g["dtype"] == "float32" and g["device"] == "cpu"
    assert g["weights_sha256"]["unet/diffusion_pytorch_model.safetensors"] == file_sha256(
        tiny_model / "unet" / "diffusion_pytorch_model.safetensors")
    assert prov["unet_evals"]["total"] == res["unet_evals"].sum() + cal["unet_evals"]
    # white-box screen (3 captions x 2 seeds x 2) + reference calibration (3 captions x 2 images x 2 steps x 2)
    assert cal["unet_evals"] == 3 * 2 * 2 + 3 * 2 * 2 * 2
    assert len(cal["reference_null"]) == 6 and cal["tiled_l2_threshold"] == min(0.15, min(cal["reference_null"]))
    assert prov["seeds"]["whitebox"] == [0, 1] and prov["thresholds"]["tiled_l2"] == cal["tiled_l2_threshold"]
    assert prov["thresholds"]["tiled_l2_configured"] == 0.15

    # rerun: every caption is done -> nothing regenerated, identical outputs
    before = {p: p.stat().st_mtime_ns for p in (out / "captions").glob("*.json")}
    res_bytes = (out / "results.parquet").read_bytes()
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "captions").glob("*.json")} == before
    assert (out / "results.parquet").read_bytes() == res_bytes
    # a different config is refused rather than mixed into the same outputs
    assert main(args[:-2] + ["--set", "probe.variants=[exact]"]) == 2  # one line naming the key that differs

    # probe.whitebox_gate: a caption the screen does not flag is not confirmed (no generation, screen evals only)
    gated = _copy_run(indexed_run[0], tmp_path / "gated")
    assert main([args[0], str(gated), *args[2:], "--set", "probe.whitebox_gate=true"]) == 0
    res = pd.read_parquet(gated / "probe" / "results.parquet")
    assert (res["n_generations"] == np.where(res["whitebox_flag"], 3, 0)).all()
    assert (res["tier"] == np.where(res["whitebox_flag"], "confirm", "screen")).all()


# --- a memorizing model through detection, verdicts, evidence, resume, budget -----------------------------------
def memorizing_model(prompts, seeds, data="", ref="", **params):
    """Returns the training photo ``ref`` (center-cropped square, 128 px, plus noise) for MEMO; noise otherwise."""
    ref = Image.open(Path(data) / ref).convert("RGB")
    out = []
    for p, s in zip(prompts, seeds):
        if "explode" in p:
            raise RuntimeError("generator crashed on this prompt")
        rng = np.random.default_rng(s)
        if p == MEMO or p == MEMO.split(",")[0].split()[0]:
            w, h = ref.size
            sq = ref.crop(((w - h) // 2, 0, (w - h) // 2 + h, h)).resize((128, 128), Image.BICUBIC)
            a = np.asarray(sq, dtype=np.float32) + rng.normal(0, 4, (128, 128, 3))
        else:
            a = rng.uniform(0, 255, (128, 128, 3))
        out.append(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
    return out


def _memo_cfg(data, ref, **kw):
    from auditor.config import AuditorConfig

    p = ProbeConfig(generator="python", model="memorizing-test-model", steps=1, top_n=10, progress=False,
                    screen_generations=2, confirm_generations=4, calibration_captions=3, clique_k=3,
                    python={"callable": f"{__name__}:memorizing_model", "params": {"data": str(data), "ref": ref}}, **kw)
    return AuditorConfig(probe=p)


def test_memorizing_model_verdicts_evidence_and_resume(indexed_run, tmp_path, kodak):
    from auditor.probe.runner import run_probe

    src, data, names = indexed_run
    run = _copy_run(src, tmp_path / "run")
    res = run_probe(run, _memo_cfg(data, names[0])).set_index("caption")
    memo = res.loc[MEMO]
    assert memo["verdict"] == "verbatim" and memo["tier"] == "confirm" and memo["screen_flag"]
    assert memo["verbatim_count"] == 4 and memo["n_generations"] == 4
    assert memo["best_key"] == names[0] and memo["best_distance"] <= 0.15
    assert memo["best_distance"] == memo["min_tiled_l2"]
    assert memo["largest_clique"] == 4 and memo["whitebox_score"] != memo["whitebox_score"]  # NaN: black box
    assert memo["unet_evals"] == 4 * 2  # nominal steps x 2 (CFG) per image, screen images reused
    assert len(memo["evidence"]) >= 1 and all((run / e).exists() for e in memo["evidence"])
    ev = Image.open(run / memo["evidence"][0])
    assert ev.size[0] > ev.size[1]  # generation beside the training image
    plain = res.loc[PLAIN]
    assert plain["verdict"] == "none" and plain["tier"] == "screen" and not plain["screen_flag"]
    assert plain["n_generations"] == 2 and plain["min_tiled_l2"] > 0.15 and plain["largest_clique"] == 1
    boom = res.loc[BOOM]
    assert boom["verdict"] == "error" and "generator crashed" in boom["error"] and boom["n_generations"] == 0
    gens = pd.read_parquet(run / "probe" / "generations.parquet")
    g = gens[gens["caption"] == MEMO]
    assert (g["verdict"] == "verbatim").all() and (g["best_key"] == names[0]).all()
    assert (gens.loc[gens["caption"] == BOOM, "verdict"] == "error").all()
    cal = json.loads((run / "probe" / "calibration.json").read_text())
    assert 0 < cal["consistency_threshold"] <= 0.15 and len(cal["consistency_null"]) == 3

    # kill after one caption: drop the other markers and outputs, rerun -> identical results
    out = run / "probe"
    want_res = (out / "results.parquet").read_bytes()
    want_gen = (out / "generations.parquet").read_bytes()
    markers = sorted((out / "captions").glob("*.json"))
    for m in markers[1:]:
        m.unlink()
    for name in ("results.parquet", "generations.parquet", "provenance.json"):
        (out / name).unlink()
    run_probe(run, _memo_cfg(data, names[0]))
    assert (out / "results.parquet").read_bytes() == want_res
    assert (out / "generations.parquet").read_bytes() == want_gen


def test_budget_stops_new_work_and_says_so(indexed_run, tmp_path):
    from auditor.probe.runner import run_probe

    src, data, names = indexed_run
    run = _copy_run(src, tmp_path / "run")
    # calibration: 3 captions x 2 images x 2 evals = 12; the first caption's screen: 4 -> then nothing is left
    res = run_probe(run, _memo_cfg(data, names[0], budget_unet_evals=16,
                                      reference_calibration_generations=0)).set_index("caption")
    memo = res.loc[MEMO]
    assert memo["tier"] == "confirm" and memo["n_generations"] == 2 and "budget" in memo["error"]
    assert memo["verdict"] == "verbatim"  # the screen images already match the training photo
    for cap in (PLAIN, BOOM):
        assert res.loc[cap, "verdict"] == "error" and res.loc[cap, "tier"] == "skipped"
        assert "budget" in res.loc[cap, "error"] and res.loc[cap, "unet_evals"] == 0
    prov = json.loads((run / "probe" / "provenance.json").read_text())
    assert prov["unet_evals"]["total"] == 16 <= prov["unet_evals"]["budget"]


def test_variants(tmp_path):
    from auditor.probe.variants import load_user_variants, make_variants

    f = tmp_path / "v.json"
    f.write_text(json.dumps({"Hello, World! Again": ["hello world", "custom one"]}))
    v = make_variants("Hello, World! Again", ["exact", "normalized", "prefix"], [0.5, 1.0], load_user_variants(str(f)))
    assert v == [("exact", "Hello, World! Again"), ("normalized", "hello world again"), ("prefix50", "Hello, World!"),
                 ("user1", "hello world"), ("user2", "custom one")]
    c = tmp_path / "v.csv"
    c.write_text("caption,prompt\nx,y\nx,z\n")
    assert load_user_variants(str(c)) == {"x": ["y", "z"]}
