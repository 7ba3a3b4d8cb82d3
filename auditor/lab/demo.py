"""The memorisation lab end to end: planted dataset -> img2dataset -> tiny Stable Diffusion -> the auditor stages.

Layout of ``OUT/`` (``auditor demo`` defaults to ``./auditor-demo``)::

    source/images/, source/planted.parquet   the planted dataset (ground truth: group, copy count, transform)
    dataset/                                  what the real img2dataset CLI wrote (webdataset shards)
    model/                                    the trained StableDiffusionPipeline (save_pretrained folder)
    run/index, run/dedup, run/probe           the auditor stages on dataset/ and model/
    report.html (+ summary.md/json)           the report
    lab.json                                  config, per-stage wall times, training stats, extraction tables
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from PIL import Image

from ..rundir import RunDir
from ..utils import package_versions, write_json, write_text
from .config import LabConfig, LabRunConfig
from .train import by_copy_count, format_table, quick_eval, to_training_array, train_pipeline

log = logging.getLogger(__name__)

# the demo's settings for the auditor stages: the lab model is tiny, so fewer sampling steps are plenty, and
# the budget confirms every risky caption (about 70 generations). The white-box screen is not used to gate the
# demo: calibrated on ~30 singleton captions of a model trained for 2 minutes on CPU, its threshold moved from
# 0.87 to 1.33 between training runs and once let the 100x caption through unconfirmed (1.29 < 1.33).
DEMO_OVERRIDES = {
    "index": {"workers": 0},
    "probe": {"steps": 25, "guidance_scale": 3.0, "screen": "none", "confirm_generations": 8},
}


def _check_out_dir(out: Path) -> None:
    pkg = Path(__file__).resolve().parents[1]
    o = out.resolve()
    if o == pkg or pkg in o.parents:
        raise ValueError(f"refusing to write the lab into the package folder ({o}); pass another out dir")


class _Timer:
    def __init__(self):
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        log.info("lab: %s ...", name)
        try:
            yield
        finally:
            self.stages[name] = round(time.perf_counter() - t0, 2)
            log.info("lab: %s done in %.1f s", name, self.stages[name])


def make_sources(cfg: LabConfig):
    from .dataset import folder_sources, skimage_sources

    n = len(cfg.copy_counts) + cfg.singletons
    if cfg.photos == "skimage":
        return skimage_sources(n, len(cfg.copy_counts), cfg.seed, cfg.max_side)
    return folder_sources(cfg.photos_dir, n, cfg.seed, cfg.captions_file, cfg.max_side)


def load_training_pairs(dataset_dir: Path, planted: pd.DataFrame, source_dir: Path, res: int):
    """(images, captions, planted file names) of every downloaded sample, in (shard, key) order.

    The img2dataset output is read through the auditor's own reader; each sample is tied back to its planted
    file through the ``source`` column img2dataset saved. img2dataset writes a shard's samples in the order their
    downloads finish (a thread pool), while its keys follow the input rows: the samples are sorted by key so
    that the training order, and so the trained model, does not depend on download timing."""
    from ..io import open_dataset

    reader = open_dataset(str(dataset_dir))
    files = set(planted["file"])
    imgs, caps, names, errors = [], [], [], []
    for ref in reader.shards():
        for s in sorted(reader.read_shard(ref), key=lambda smp: str(smp.key)):
            if s.data is None:
                errors.append({"key": s.key, "shard": s.shard, "stage": "lab-train", "error": s.error or s.status})
                continue
            name = Path(str(s.meta.get("source") or s.url or "")).name
            if name not in files:  # served as /<row>_<file>: fall back to the URL's file name
                name = Path(str(s.url or "")).name.split("_", 1)[-1]
            try:
                from io import BytesIO

                with Image.open(BytesIO(s.data)) as im:
                    imgs.append(to_training_array(im, res))
            except Exception as exc:  # noqa: BLE001 - a bad sample is recorded, not fatal
                errors.append({"key": s.key, "shard": s.shard, "stage": "lab-train", "error": repr(exc)})
                continue
            caps.append(s.caption or "")
            names.append(name)
    return imgs, caps, names, errors


def eval_groups(planted: pd.DataFrame, sources, source_dir: Path, res: int, n_singletons: int) -> list[dict]:
    """The groups the lab's quick check prompts: every duplicate group and ``n_singletons`` singletons,
    each with its main caption and its original (first copy) as the reference."""
    first = planted[planted["copy_index"] == 0].sort_values("group")
    dup = first[first["copy_count"] > 1]
    single = first[first["copy_count"] == 1].head(n_singletons)
    out = []
    for _, r in pd.concat([dup, single]).iterrows():
        with Image.open(source_dir / "images" / r["file"]) as im:
            ref = to_training_array(im, res)
        out.append({"group": int(r["group"]), "source": r["source"], "copy_count": int(r["copy_count"]),
                    "caption": sources[int(r["group"])].caption, "image": ref})
    return out


def probe_table(run_dir: Path, planted: pd.DataFrame) -> Optional[list[dict]]:
    """Map the probe's verdicts back to the planted groups (through the main captions) and tabulate by copy
    count: a group counts as extracted when a probed variant of its caption got a verbatim copy (Carlini et al.'s
    criterion: the whole image within delta); a template verdict (part of the tiles) is counted apart."""
    p = RunDir(run_dir).results
    if not p.exists():
        return None
    res = pd.read_parquet(p)
    if res.empty:
        return []
    main = planted[planted["is_main_caption"]].drop_duplicates("group").set_index("caption")
    rows = []
    for cap, sel in res.groupby("caption"):
        if cap not in main.index:
            continue
        g = main.loc[cap]
        verdicts = set(sel["verdict"].astype(str))
        rows.append({"group": int(g["group"]), "source": g["source"], "copy_count": int(g["copy_count"]),
                     "min_tiled_l2": float(np.nanmin(sel["min_tiled_l2"].astype(float))) if sel["min_tiled_l2"].notna().any() else float("nan"),
                     "extracted": "verbatim" in verdicts,
                     "template": "template" in verdicts and "verbatim" not in verdicts,
                     "verdicts": sorted(verdicts)})
    return by_copy_count(rows) if rows else []


def summary_markdown(summary: dict) -> str:
    """A short markdown page of a lab run: timings, training stats, extraction tables by copy count."""
    tr = summary.get("training") or {}
    lines = ["# auditor demo: memorisation lab run", "",
             f"Dataset: {summary['dataset']['images']} images ({summary['dataset'].get('downloaded', '-')} downloaded "
             f"by img2dataset), duplicate groups copied {summary['dataset']['copy_counts']} times, "
             f"{summary['dataset']['singletons']} singletons.", "",
             f"Training on `{tr.get('device')}` ({tr.get('torch_threads')} torch threads): VAE "
             f"{(tr.get('vae') or {}).get('seconds')} s ({(tr.get('vae') or {}).get('steps')} steps, reconstruction tiled L2 "
             f"median {(tr.get('vae') or {}).get('recon_tiled_l2_median', float('nan')):.3f}), UNet "
             f"{(tr.get('unet') or {}).get('seconds')} s ({(tr.get('unet') or {}).get('steps')} steps, "
             f"{(tr.get('unet') or {}).get('epochs')} epochs).", "",
             "## Stage wall times (s)", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in summary["stage_seconds"].items()]
    lines += [f"| **total** | **{summary['total_seconds']}** |", ""]
    if summary.get("quick_eval"):
        lines += ["## Lab check: generations from each group's caption vs. its training image", "",
                  format_table(summary["quick_eval"]["by_copy_count"]), ""]
    if summary.get("probe_by_copy_count"):
        lines += ["## `auditor probe` verdicts by planted copy count", "",
                  format_table(summary["probe_by_copy_count"]), ""]
    return "\n".join(lines)


def run_lab(cfg: LabConfig, auditor_cfg=None, stages: bool = True) -> dict:
    """Build, download, train and (``stages=True``) audit. Returns the summary written to ``OUT/lab.json``."""
    out = Path(cfg.out_dir).expanduser().absolute()  # a relative out dir is taken from the current folder, once
    _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    timer = _Timer()
    summary: dict = {"config": cfg.model_dump(mode="json"), "versions": package_versions()}
    source_dir, dataset_dir, model_dir, run_dir = out / "source", out / "dataset", out / "model", out / "run"

    with timer.stage("dataset"):
        from .dataset import build_dataset

        sources = make_sources(cfg)
        planted = build_dataset(sources, cfg.copy_counts, source_dir, cfg.seed, cfg.variant_caption_rate,
                                cfg.split_groups, cfg.heavy_crop_rate)
    summary["dataset"] = {"images": len(planted), "sources": len(sources),
                          "copy_counts": cfg.copy_counts, "singletons": int((planted["copy_count"] == 1).sum())}

    if cfg.download:
        with timer.stage("img2dataset"):
            from ..io.download import serve_and_download

            if dataset_dir.exists():
                import shutil

                shutil.rmtree(dataset_dir)
            items = [(source_dir / "images" / f, c) for f, c in zip(planted["file"], planted["caption"])]
            serve_and_download(items, dataset_dir, output_format="webdataset", image_size=None, resize_mode="no",
                               processes=cfg.download_processes, number_sample_per_shard=max(64, len(items) // 4 + 1))
        with timer.stage("load"):
            imgs, caps, names, errors = load_training_pairs(dataset_dir, planted, source_dir, cfg.resolution)
        summary["dataset"]["downloaded"] = len(imgs)
        summary["dataset"]["errors"] = errors
    else:
        with timer.stage("load"):
            imgs, caps = [], []
            for f, c in zip(planted["file"], planted["caption"]):
                with Image.open(source_dir / "images" / f) as im:
                    imgs.append(to_training_array(im, cfg.resolution))
                caps.append(c)

    with timer.stage("train"):
        summary["training"] = train_pipeline(cfg, imgs, caps, model_dir, out / "tokenizer-files")

    if cfg.eval_generations:
        with timer.stage("quick_eval"):
            from .train import load_pipeline

            pipe = load_pipeline(model_dir, cfg.device)
            groups = eval_groups(planted, sources, source_dir, cfg.resolution, n_singletons=12)
            ev = quick_eval(pipe, groups, cfg)
            del pipe
        summary["quick_eval"] = ev
        log.info("lab quick extraction check:\n%s", format_table(ev["by_copy_count"]))

    if stages and cfg.download:
        acfg = auditor_cfg if auditor_cfg is not None else LabRunConfig.model_validate(DEMO_OVERRIDES)
        n_dup = len(cfg.copy_counts)
        update = {"model": str(model_dir), "progress": cfg.progress}
        if "compare_max_side" not in acfg.probe.model_fields_set:
            # compare at the resolution the model was trained at (the lab's), not the 256-px stored photos:
            # a 32-px generation upsampled to 256 px is blurred, whatever it memorised
            update["compare_max_side"] = cfg.resolution
        probe = acfg.probe.model_copy(update=update)
        acfg = acfg.model_copy(update={"probe": probe, "seed": cfg.seed})
        with timer.stage("index"):
            from ..index.runner import run_index

            icfg = acfg.index.model_copy(update={"progress": cfg.progress})
            if "name" not in acfg.index.embedder.model_fields_set:
                # the demo indexes hashes only unless told otherwise. With the shipped copy descriptor in the
                # index, dedup (cosine 0.60) merges the demo's *distinct* grayscale texture crops into clusters
                # (measured 2026-12-03: 25 grass crops, 13 brick-wall and 13 Hubble crops), so their singleton
                # captions rank as risky and are probed; tiled L2 then finds blurry 32-px generations of a
                # low-contrast texture within delta of one of them (2-3 singletons "verbatim" per run, under the
                # old tile rule as under the fused one). The descriptor's precision on near-uniform textures is
                # the open part of issue 15.
                icfg = icfg.model_copy(update={"embedder": icfg.embedder.model_copy(update={"name": "none"})})
            run_index(str(dataset_dir), run_dir, icfg)
        with timer.stage("dedup"):
            from ..dedup.runner import run_dedup

            run_dedup(run_dir, acfg.dedup, seed=acfg.seed)
        with timer.stage("probe"):
            from ..probe.runner import run_probe

            run_probe(run_dir, acfg.probe)
        with timer.stage("report"):
            from ..report.render import build_report

            report = build_report(run_dir, acfg.report, out / "report.html")
        summary["report"] = str(report)
        summary["probe_by_copy_count"] = probe_table(run_dir, planted)
        summary["probed_duplicate_groups"] = n_dup

    summary["stage_seconds"] = timer.stages
    summary["total_seconds"] = round(sum(timer.stages.values()), 1)
    write_json(out / "lab.json", summary)
    write_text(out / "lab.md", summary_markdown(summary))
    return summary
