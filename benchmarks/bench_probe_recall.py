"""Probe recall on a trained memorizing model (issue 15's first target).

A planted dataset is built through the lab (:mod:`auditor.lab`): duplicate groups of 200, 50, 20 and 5 copies
(``--counts``) plus singletons, from imagenet-256 photos with CC3M validation captions; in the groups of
``--split`` a share (``--heavy-crop-rate``) of the copies are one heavy crop of the photo with the group's
captions, so dedup puts them in a sub-cluster apart from the main one (checked on the manifest). The lab's tiny
Stable Diffusion is trained on it (``lab.download=false``: the planted files directly), then:

1. ground truth "clearly memorized": 8 samples of each group's main caption (and of ``--gt-singletons``
   singletons), min tiled L2 (Carlini, the lab's ``quick_eval``, at the model's resolution) against the group's
   original <= 0.12, sampled with the probe's default steps and guidance;
2. ``auditor index`` + ``auditor dedup`` + ``auditor probe`` with their defaults, through the CLI as a user
   runs them (the dataset as a folder with ``index.reader.captions_file`` = the planted table);
3. recall over the clearly memorized groups (a verbatim or template verdict on the group's caption, or a
   generation of any caption copying one of the group's images through retrieval), singletons flagged, UNet
   evaluations in all and per probed caption against Carlini et al.'s 500 generations per caption, and the
   recall reached against UNet evaluations spent (from the probe's confirm order and per-seed verdicts).

Every step is cached in ``--work`` (delete a step's output to redo it); ``--probe-name`` keeps several probe runs
(each in ``WORK/runs/NAME``, the index and dedup folders copied in) so that a fix is measured beside the baseline.

    python benchmarks/bench_probe_recall.py --work /tmp/probe-recall --out benchmarks/results
    python benchmarks/bench_probe_recall.py --work /tmp/probe-recall --probe-name fixed --out benchmarks/results
    # the probe of an older commit beside it: git archive COMMIT auditor | tar -x -C /tmp/base
    python benchmarks/bench_probe_recall.py --work /tmp/probe-recall --probe-name base --code /tmp/base
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import cpu_model  # noqa: E402

SHARED = Path(os.environ.get("AUDITOR_SHARED_DATA", REPO.parent / "shared" / "data"))
COUNTS = [200, 200, 50, 50, 50] + [20] * 6 + [5] * 8
SPLIT = [0, 1, 2, 3, 5]   # both 200x groups, two 50x, one 20x
CLEAR = 0.12              # "clearly memorized": a sample within this tiled L2 of the original


def lab_config(args):
    from auditor.lab.config import LabConfig

    return LabConfig(
        out_dir=str(args.work / "lab"), seed=args.seed, progress=args.progress, photos="folder",
        photos_dir=str(SHARED / "photos" / "imagenet-256"),
        captions_file=str(SHARED / "captions" / "cc3m_validation.tsv"),
        copy_counts=args.counts, singletons=args.singletons, split_groups=args.split,
        heavy_crop_rate=args.heavy_crop_rate, download=False, train_steps=args.train_steps,
        vae_steps=args.vae_steps, eval_generations=0, threads=args.threads)


def build(args, cfg) -> pd.DataFrame:
    """The planted dataset alone (the lab's functions; run_lab writes the same bytes again), so that dedup's
    split of the groups can be checked before any training."""
    from auditor.lab.dataset import build_dataset
    from auditor.lab.demo import make_sources

    src = args.work / "lab" / "source"
    if not (src / "planted.parquet").exists():
        build_dataset(make_sources(cfg), cfg.copy_counts, src, cfg.seed, cfg.variant_caption_rate,
                      cfg.split_groups, cfg.heavy_crop_rate)
    return pd.read_parquet(src / "planted.parquet")


def train(args, cfg) -> dict:
    """The lab without its stages: planted dataset + VAE + UNet (cached in WORK/lab)."""
    from auditor.lab.demo import run_lab

    lab = args.work / "lab"
    if (lab / "model" / "model_index.json").exists() and (lab / "lab.json").exists():
        return json.loads((lab / "lab.json").read_text())
    t0 = time.perf_counter()
    summary = run_lab(cfg, stages=False)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    (lab / "lab.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def ground_truth(args, cfg, planted: pd.DataFrame) -> list[dict]:
    """Per group (and per ``--gt-singletons`` singletons): min tiled L2 of 8 samples against the original."""
    from auditor.lab.demo import eval_groups, make_sources
    from auditor.lab.train import load_pipeline, quick_eval
    from auditor.probe.config import ProbeConfig

    p = args.work / "gt.json"
    if p.exists():
        return json.loads(p.read_text())
    t0 = time.perf_counter()
    pc = ProbeConfig()  # the probe's default sampling: the copies it can find are the ones made that way
    gcfg = cfg.model_copy(update={"eval_generations": 8, "eval_steps": pc.steps, "eval_guidance": pc.guidance_scale,
                                  "eval_threshold": CLEAR})
    pipe = load_pipeline(args.work / "lab" / "model", "cpu")
    groups = eval_groups(planted, make_sources(cfg), args.work / "lab" / "source", cfg.resolution,
                         n_singletons=args.gt_singletons)
    rows = quick_eval(pipe, groups, gcfg)["groups"]
    for r in rows:
        r["clear"] = bool(r["min_tiled_l2"] <= CLEAR)
    out = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1), "steps": pc.steps,
           "guidance": pc.guidance_scale, "samples": 8}
    p.write_text(json.dumps(out, indent=1))
    return out


def cli(args, *argv, log: Path, code: Path = REPO) -> float:
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    if args.threads:  # torch's intra-op pool of the probe's generator (a runtime setting, not a probe default)
        env["OMP_NUM_THREADS"] = str(args.threads)
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"$ auditor {' '.join(map(str, argv))}\n")
        fh.flush()
        subprocess.run([sys.executable, "-m", "auditor.cli", *map(str, argv)], check=True, env=env, stdout=fh,
                       stderr=subprocess.STDOUT, timeout=args.timeout,
                       cwd=args.work)  # not a source folder: `-m` puts the cwd first on sys.path, before PYTHONPATH
    return round(time.perf_counter() - t0, 1)


def stages(args, probe: bool = True) -> dict:
    """index + dedup once (WORK/run), then the probe in WORK/runs/NAME (index/ and dedup/ copied in)."""
    work, times = args.work, {}
    tp = work / "stage_seconds.json"
    if tp.exists():
        times = json.loads(tp.read_text())
    run = work / "run"
    src = work / "lab" / "source"
    if not (run / "index" / "index.json").exists():
        times["index"] = cli(args, "index", src / "images", "--out", run, "--set",
                             f"index.reader.captions_file={src / 'planted.parquet'}", log=work / "stages.log")
    if not (run / "dedup" / "risk.parquet").exists():
        times["dedup"] = cli(args, "dedup", run, log=work / "stages.log")
    pr = work / "runs" / args.probe_name
    if probe and not (pr / "probe" / "provenance.json").exists():
        pr.mkdir(parents=True, exist_ok=True)
        for d in ("index", "dedup"):
            if not (pr / d).exists():
                shutil.copytree(run / d, pr / d)
        extra = [x for s in args.probe_set for x in ("--set", s)]
        times[f"probe:{args.probe_name}"] = cli(args, "probe", pr, "--model", work / "lab" / "model", *extra,
                                                log=work / f"probe-{args.probe_name}.log", code=args.code)
    tp.write_text(json.dumps(times, indent=1))
    return times


def lab_distance(run_dir: Path, gens: pd.DataFrame, original: Path | None) -> float | None:
    """The smallest tiled L2 of the probe's own generations against the group's original, as the ground truth
    measures it (the lab's ``tiled_l2`` at the generation's resolution)."""
    from PIL import Image

    from auditor.lab.train import tiled_l2, to_training_array

    paths = [p for p in gens["path"].fillna("") if p]
    if not paths or original is None:
        return None
    best = np.inf
    with Image.open(original) as im:
        ref = None
        for p in paths:
            with Image.open(run_dir / p) as g:
                a = np.asarray(g.convert("RGB"), dtype=np.float32) / 255.0
            if ref is None:
                ref = to_training_array(im, a.shape[0])
            best = min(best, tiled_l2(a, ref))
    return float(best)


def dedup_last_run(run: Path) -> dict:
    """Dedup's own account of its last run (guard rounds, rows split off by the chaining guard)."""
    p = run / "dedup" / "state" / "state.json"
    return json.loads(p.read_text()).get("last_run", {}) if p.exists() else {}


def split_check(planted: pd.DataFrame, manifest: pd.DataFrame) -> list[dict]:
    """Per duplicate group: the clusters its copies fall in (from the manifest); split = >= 2 clusters of >= 2
    of its copies."""
    m = planted.merge(manifest[["key", "cluster_id", "cluster_size"]], left_on="file", right_on="key")
    out = []
    for g, sel in m[m["copy_count"] > 1].groupby("group"):
        heavy = sel["transform"].str.startswith("heavy crop")
        orig = sel[sel["copy_index"] == 0]["cluster_id"].iloc[0]
        sizes = sel.groupby("cluster_id").size().sort_values(ascending=False)
        multi = sizes[sizes >= 2]
        out.append({"group": int(g), "copies": int(sel["copy_count"].iloc[0]), "heavy_crops": int(heavy.sum()),
                    "main_cluster": int((sel["cluster_id"] == orig).sum()),
                    "heavy_in_main": int((heavy & (sel["cluster_id"] == orig)).sum()),
                    "clusters": int(sizes.size), "clusters_ge2": [int(v) for v in multi.tolist()],
                    "split": bool(len(multi) >= 2)})
    return out


def analyse(args, planted: pd.DataFrame, gt: dict) -> dict:
    pr = args.work / "runs" / args.probe_name
    res = pd.read_parquet(pr / "probe" / "results.parquet")
    gens = pd.read_parquet(pr / "probe" / "generations.parquet")
    prov = json.loads((pr / "probe" / "provenance.json").read_text())
    manifest = pd.read_parquet(pr / "dedup" / "manifest.parquet")
    steps, guidance = prov["steps"], prov["guidance_scale"]
    per_image = steps * (2 if guidance > 1 else 1)
    carlini = 500 * per_image

    file_group = dict(zip(planted["file"], planted["group"]))
    file_tf = dict(zip(planted["file"], planted["transform"]))
    cap_group = {}
    for c, g in zip(planted["caption"], planted["group"]):
        cap_group.setdefault(c, set()).add(int(g))
    gtrows = {r["group"]: r for r in gt["rows"]}

    res["groups"] = res["caption"].map(lambda c: sorted(cap_group.get(c, set())))
    res["copy"] = res["verdict"].isin(["verbatim", "template"])
    gens = gens.merge(res[["caption", "variant", "verdict"]].rename(columns={"verdict": "caption_verdict"}),
                      on=["caption", "variant"], how="left")
    gcopy = gens["verdict"].eq("verbatim") | (gens["verdict"].eq("template")
                                                & gens["caption_verdict"].isin(["verbatim", "template"]))
    retrieval = gens[gcopy & gens["reference_source"].eq("retrieval")]

    thr = prov["thresholds"].get("whitebox")
    first = planted[planted["copy_index"] == 0]
    originals = dict(zip(first["group"].astype(int), first["file"]))
    src_images = args.work / "lab" / "source" / "images"
    originals = {g: src_images / f for g, f in originals.items()}
    per_group = []
    for g in sorted({int(x) for x in planted.loc[planted["copy_count"] > 1, "group"]}):
        rows = res[res["groups"].map(lambda gs: g in gs)]
        by_caption = bool(rows["copy"].any())
        by_retrieval = bool(retrieval["best_key"].map(file_group).eq(g).any())
        r0 = rows.sort_values("rank").iloc[0] if len(rows) else None
        best = rows[rows["copy"]]["best_key"].tolist() if by_caption else []
        gtr = gtrows.get(g, {})
        lab_l2 = lab_distance(pr, gens[gens["caption"].isin(rows["caption"])], originals.get(g))
        per_group.append({
            "group": g, "copies": int(planted.loc[planted["group"] == g, "copy_count"].iloc[0]),
            "gt_min_tiled_l2": gtr.get("min_tiled_l2"), "clear": bool(gtr.get("clear", False)),
            "probed": bool(len(rows)), "rank": int(r0["rank"]) if r0 is not None else None,
            "whitebox_score": None if r0 is None or pd.isna(r0["whitebox_score"]) else float(r0["whitebox_score"]),
            "whitebox_flag": None if r0 is None or pd.isna(r0["whitebox_flag"]) else bool(r0["whitebox_flag"]),
            "tier": r0["tier"] if r0 is not None else None, "verdict": r0["verdict"] if r0 is not None else None,
            "probe_min_tiled_l2": None if r0 is None or pd.isna(r0["min_tiled_l2"]) else float(r0["min_tiled_l2"]),
            "probe_generations_lab_l2": lab_l2,
            "unet_evals": int(rows["unet_evals"].sum()),
            "best_copy_transform": file_tf.get(best[0], "")[:40] if best else "",
            "found_by_caption": by_caption, "found_by_retrieval": by_retrieval,
            "found": by_caption or by_retrieval})
    singles = set(planted.loc[planted["copy_count"] == 1, "file"])
    group_count = planted.groupby("group")["copy_count"].first().to_dict()
    # a singleton's caption: carried by singletons only (a duplicate group's variant caption is not one)
    single_cap = res["groups"].map(lambda gs: bool(gs) and all(group_count[x] == 1 for x in gs))
    flagged_single_captions = res[res["copy"] & single_cap]
    copies_of_singles = gens[gcopy & gens["best_key"].isin(singles)]
    clear = [r for r in per_group if r["clear"]]
    found = [r for r in clear if r["found"]]

    # recall against UNet evaluations: calibration, then the screen of every caption, then the confirm phase in
    # the runner's order (flagged first, by white-box margin, then rank), each caption's generations by seed
    total = int(prov["unet_evals"]["total"])
    cal = int(prov["unet_evals"]["calibration"])
    wb_cost = 2 * len(prov["seeds"]["whitebox"]) if prov["screen"] == "whitebox" else 0
    screen = wb_cost * len(res)
    res["_margin"] = res["whitebox_score"].astype(float) - (thr or 0.0) if prov["screen"] == "whitebox" else 0.0
    order = res.assign(_f=~res["screen_flag"].astype(bool)).sort_values(["_f", "_margin", "rank"],
                                                                        ascending=[True, False, True])
    spent = cal + screen
    events = []
    clear_groups = {r["group"] for r in clear}
    for r in order.itertuples():
        g = gens[(gens["caption"] == r.caption) & (gens["variant"] == r.variant)].sort_values("seed")
        t = 0
        hit_at = None
        for k, v in enumerate(g["verdict"].tolist()):
            t += int(v == "template")
            if hit_at is None and r.copy and (v == "verbatim" or t >= 2):
                hit_at = k
        conf = int(r.unet_evals) - wb_cost
        if hit_at is not None:
            events.append((spent + (hit_at + 1) * per_image, set(r.groups) & clear_groups))
        spent += conf
    # recall had every confirmed caption been given only its first m generations (the same per-seed verdicts)
    by_m = []
    confirmed = res[res["n_generations"] > 0]
    for m in (1, 2, 4, 8, 16, 32):
        if m > int(res["n_generations"].max() or 0):
            break
        got = set()
        for r in confirmed.itertuples():
            g = gens[(gens["caption"] == r.caption) & (gens["variant"] == r.variant)].sort_values("seed").head(m)
            gc = g["verdict"].eq("verbatim").any() or (g["verdict"].eq("template").sum() >= 2)
            if gc:
                got |= set(r.groups) & clear_groups
            rk = g[g["verdict"].isin(["verbatim", "template"]) & g["reference_source"].eq("retrieval")]
            got |= set(rk["best_key"].map(file_group).dropna().astype(int)) & clear_groups
        cost = cal + screen + len(confirmed) * m * per_image
        by_m.append({"confirm_generations": m, "unet_evals": int(cost),
                     "share_of_carlini": cost / (carlini * max(1, len(res))), "recall": len(got) / max(1, len(clear))})
    curve, seen = [], set()
    for ev, gs in sorted(events, key=lambda e: e[0]):
        new = gs - seen
        if new:
            seen |= new
            curve.append({"unet_evals": int(ev), "share_of_carlini": ev / (carlini * max(1, len(res))),
                          "recall": len(seen) / max(1, len(clear))})
    return {
        "probe_name": args.probe_name, "steps": steps, "guidance_scale": guidance, "screen": prov["screen"],
        "thresholds": prov["thresholds"], "probed_captions": int(len(res)),
        "verdicts": res["verdict"].value_counts().to_dict(),
        "unet_evals": {"total": total, "calibration": cal, "probe": total - cal,
                       "per_probed_caption": total / max(1, len(res)),
                       "carlini_per_caption": carlini, "share_of_carlini": total / (carlini * max(1, len(res)))},
        "clearly_memorized": len(clear), "found": len(found), "recall": len(found) / max(1, len(clear)),
        "recall_all_groups": sum(r["found"] for r in per_group) / max(1, len(per_group)),
        # Carlini's own delta as the ground truth's bound (a looser "memorized" than the target's 0.12)
        "memorized_at_015": sum(1 for r in per_group if (r["gt_min_tiled_l2"] or 1) <= 0.15),
        "found_at_015": sum(1 for r in per_group if (r["gt_min_tiled_l2"] or 1) <= 0.15 and r["found"]),
        "singleton_captions_flagged": int(len(flagged_single_captions)),
        "generations_copying_a_singleton": int(len(copies_of_singles)),
        "singletons_gt_clear": sum(1 for r in gt["rows"] if r["copy_count"] == 1 and r["clear"]),
        "singletons_gt_measured": sum(1 for r in gt["rows"] if r["copy_count"] == 1),
        "groups": per_group, "curve": curve, "by_confirm_generations": by_m,
        "split": split_check(planted, manifest),
        "dedup_last_run": dedup_last_run(pr),
    }


def by_size(rep: dict) -> list[dict]:
    out = []
    for cc in sorted({r["copies"] for r in rep["groups"]}, reverse=True):
        sel = [r for r in rep["groups"] if r["copies"] == cc]
        out.append({"copies": cc, "groups": len(sel), "split": sum(s["split"] for s in rep["split"] if s["copies"] == cc),
                    "clear": sum(r["clear"] for r in sel), "found_clear": sum(r["clear"] and r["found"] for r in sel),
                    "found_any": sum(r["found"] for r in sel), "unet_evals": sum(r["unet_evals"] for r in sel)})
    return out


def markdown(doc: dict) -> str:
    lines = [f"# Probe recall on a trained memorizing model ({doc['date']})", "",
             f"Machine: {doc['machine']}. Training: {doc['training']}.", ""]
    for rep in doc["runs"]:
        u = rep["unet_evals"]
        lines += [f"## probe run `{rep['probe_name']}` (screen {rep['screen']}, {rep['steps']} steps, guidance "
                  f"{rep['guidance_scale']})", "",
                  f"Recall {rep['found']}/{rep['clearly_memorized']} = {rep['recall']:.2f} of the clearly memorized "
                  f"groups (at Carlini's 0.15: {rep['found_at_015']}/{rep['memorized_at_015']}); singleton captions flagged {rep['singleton_captions_flagged']}, generations naming a "
                  f"singleton image as their copy {rep['generations_copying_a_singleton']}; UNet evaluations "
                  f"{u['total']} ({u['calibration']} calibration) for {rep['probed_captions']} captions = "
                  f"{u['share_of_carlini']:.1%} of 500 generations per caption.", "",
                  "| copies | groups | split | clearly memorized | found (of those) | found (any) | UNet evals |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['copies']} | {r['groups']} | {r['split']} | {r['clear']} | {r['found_clear']} | "
                  f"{r['found_any']} | {r['unet_evals']} |" for r in by_size(rep)]
        lines += ["", "| group | copies | GT min tiled L2 | rank | white-box (flag) | tier | verdict | probe min tiled L2 "
                      "| its generations, lab L2 | found |",
                  "|---:|---:|---:|---:|---|---|---|---:|---:|---|"]
        for r in rep["groups"]:
            wb = "-" if r["whitebox_score"] is None else f"{r['whitebox_score']:.3f} ({'y' if r['whitebox_flag'] else 'n'})"
            pl = "-" if r["probe_min_tiled_l2"] is None else f"{r['probe_min_tiled_l2']:.3f}"
            how = ("caption" if r["found_by_caption"] else "") + (" retrieval" if r["found_by_retrieval"] else "")
            ll = "-" if r["probe_generations_lab_l2"] is None else f"{r['probe_generations_lab_l2']:.3f}"
            lines.append(f"| {r['group']} | {r['copies']} | {r['gt_min_tiled_l2']:.3f} | {r['rank']} | {wb} | "
                         f"{r['tier']} | {r['verdict']} | {pl} | {ll} | {how.strip() or 'no'} |")
        lines += ["", "Recall against UNet evaluations spent:", "", "| UNet evals | share of 500 gens/caption | recall |",
                  "|---:|---:|---:|"]
        lines += [f"| {c['unet_evals']} | {c['share_of_carlini']:.2%} | {c['recall']:.2f} |" for c in rep["curve"]]
        lines += ["", "Recall had each confirmed caption been given only its first m generations:", "",
                  "| m | UNet evals | share of 500 gens/caption | recall |", "|---:|---:|---:|---:|"]
        lines += [f"| {c['confirm_generations']} | {c['unet_evals']} | {c['share_of_carlini']:.2%} | {c['recall']:.2f} |"
                  for c in rep["by_confirm_generations"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/probe-recall"))
    ap.add_argument("--out", type=Path, default=None, help="write probe_recall.{json,md} here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--counts", type=int, nargs="+", default=COUNTS)
    ap.add_argument("--split", type=int, nargs="*", default=SPLIT)
    ap.add_argument("--heavy-crop-rate", type=float, default=0.3)
    ap.add_argument("--singletons", type=int, default=160)
    ap.add_argument("--train-steps", type=int, default=5000)
    ap.add_argument("--vae-steps", type=int, default=800)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for training (1: on shared cores more threads wait on each other)")
    ap.add_argument("--gt-singletons", type=int, default=40)
    ap.add_argument("--probe-name", default="defaults")
    ap.add_argument("--probe-set", action="append", default=[], help="extra --set for the probe (not defaults)")
    ap.add_argument("--code", type=Path, default=REPO,
                    help="the auditor source the probe runs from (PYTHONPATH), e.g. an exported older commit")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--stop-after", choices=["dedup", "train", "gt", "stages"], default=None)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    args.work = args.work.absolute()
    args.work.mkdir(parents=True, exist_ok=True)

    cfg = lab_config(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.stop_after == "dedup":
        planted = build(args, cfg)
        stages(args, probe=False)
        man = pd.read_parquet(args.work / "run" / "dedup" / "manifest.parquet")
        print(json.dumps(split_check(planted, man), indent=1))
        print(dedup_last_run(args.work / "run"))
        return 0
    summary = train(args, cfg)
    if args.stop_after == "train":
        return 0
    planted = pd.read_parquet(args.work / "lab" / "source" / "planted.parquet")
    gt = ground_truth(args, cfg, planted)
    if args.stop_after == "gt":
        return 0
    times = stages(args)
    if args.stop_after == "stages":
        return 0
    rep = analyse(args, planted, gt)
    rep["stage_seconds"] = times
    doc_p = args.work / "report.json"
    doc = json.loads(doc_p.read_text()) if doc_p.exists() else {"runs": []}
    tr = summary.get("training", {})
    doc.update({
        "date": _dt.date.today().isoformat(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} (other jobs shared the cores)",
        "config": {"counts": args.counts, "split": args.split, "heavy_crop_rate": args.heavy_crop_rate,
                   "singletons": args.singletons, "train_steps": args.train_steps, "vae_steps": args.vae_steps,
                   "resolution": cfg.resolution, "seed": args.seed},
        "training": (f"{tr.get('n_images')} images at {cfg.resolution} px on {tr.get('device')} "
                     f"({tr.get('torch_threads')} threads): VAE {(tr.get('vae') or {}).get('seconds')} s "
                     f"({args.vae_steps} steps, recon tiled L2 median "
                     f"{(tr.get('vae') or {}).get('recon_tiled_l2_median', float('nan')):.3f}), UNet "
                     f"{(tr.get('unet') or {}).get('seconds')} s ({args.train_steps} steps, "
                     f"{(tr.get('unet') or {}).get('epochs')} epochs)"),
        "lab_stage_seconds": summary.get("stage_seconds"), "ground_truth": gt,
    })
    doc["runs"] = [r for r in doc["runs"] if r["probe_name"] != args.probe_name] + [rep]
    doc_p.write_text(json.dumps(doc, indent=1, default=str))
    md = markdown(doc)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "probe_recall.json").write_text(json.dumps(doc, indent=1, default=str))
        (args.out / "probe_recall.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
