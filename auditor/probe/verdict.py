"""Verdicts of a caption variant's generations.

Per generation: the signals of :mod:`auditor.probe.signals` against the caption's references and, with an index,
against the generation's nearest images in the whole index (:mod:`auditor.probe.retrieval`); the fused verdict of
:mod:`auditor.probe.fusion` names the training image it copies (``best_key``) and where that image came from
(``reference_source``: ``caption``, ``retrieval``, or ``prompt_file:key|url|path`` for a ``--prompts`` row's own
reference). Carlini et al.'s plain tile rule (every 4 x 4 tile within delta) is kept beside it as
``tile_verdict``. Per caption variant: ``verbatim`` when a generation is, ``template`` when at least
``template_min_generations`` are (one at the calibrated per-generation rate is chance), else a clique of
near-identical generations (:class:`ConsistencyDetector`) of at least ``clique_k``, named ``template`` (a copy
with no training image to show)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from .detectors import ConsistencyDetector, CopyDescriptorDetector
from .evidence import write_evidence
from .fusion import Thresholds, best_pair
from .signals import SignalComputer


def fnum(x) -> Optional[float]:
    return None if x is None or not np.isfinite(x) else float(x)


@dataclass
class VerdictTools:
    """What judging needs besides the generations: signals, calibrated thresholds, the copy descriptor, and
    (optional) the whole-index retrieval: ``retrieve(images) -> [[(key, shard, image, embedding or None)]]``."""

    signals: SignalComputer
    thresholds: Thresholds
    copy: Optional[CopyDescriptorDetector] = None
    retrieve: Optional[Callable] = None
    tile_delta: float = 0.15  # Carlini's delta for the plain tile rule (tile_verdict)
    tile_template_fraction: float = 0.5  # ... and its template share of tiles

    @classmethod
    def for_config(cls, cfg) -> "VerdictTools":
        """Signals from a :class:`ProbeConfig`, uncalibrated thresholds (the runner sets the calibrated ones)."""
        sig = SignalComputer(cfg.tiled_l2_threshold, cfg.tile_grid, cfg.fine_grid, cfg.outlier_share, cfg.layout_grid,
                             cfg.compare_max_side, cfg.reference_crop, cfg.template_match_delta)
        return cls(sig, Thresholds(delta=cfg.tiled_l2_threshold), tile_delta=cfg.tiled_l2_threshold,
                   tile_template_fraction=cfg.template_tile_fraction)


def pair_signals(tools: VerdictTools, ims: list[Image.Image], refs: list[tuple[str, str]],
                 ref_images: list[Image.Image], ref_emb: Optional[np.ndarray]) -> list[tuple[list, list, list]]:
    """Per generation image: (reference ids, reference images, :class:`PairSignals` per reference) over the
    caption's references followed by the generation's nearest images in the index (not already among them)."""
    if not ims:
        return []
    extra = tools.retrieve(ims) if tools.retrieve is not None else [[] for _ in ims]
    gen_emb = tools.copy.embed_fn(ims) if tools.copy is not None else None
    out = []
    for i, im in enumerate(ims):
        ids = list(refs)
        images = list(ref_images)
        embs = [ref_emb[j] for j in range(len(refs))] if ref_emb is not None and len(ref_emb) == len(refs) else None
        for k, s, rim, e in extra[i]:
            if (k, s) not in ids:
                ids.append((k, s))
                images.append(rim)
                if embs is not None:
                    embs.append(e)
        sigs = tools.signals.compare(im, images, ref_ids=ids)
        if gen_emb is not None and embs and all(e is not None for e in embs):
            sims = tools.copy.similarities(gen_emb[i:i + 1], np.stack(embs))[0]
            for sg, c in zip(sigs, sims):
                sg.copy_similarity = float(c)
        out.append((ids, images, sigs))
    return out


def judge_images(tools: VerdictTools, ims: list[Image.Image], refs: list[tuple[str, str]],
                 ref_images: list[Image.Image], ref_emb: Optional[np.ndarray],
                 ref_sources: Optional[list[str]] = None) -> list[dict]:
    """One evidence dict per generation image: every signal of its best pair, its verdict, the plain tile rule's
    verdict, the copied image and its source (``ref_sources[j]`` of a caption reference, ``caption`` without
    them; ``retrieval`` for an image found in the whole index)."""
    out = []
    for ids, images, sigs in pair_signals(tools, ims, refs, ref_images, ref_emb):
        j, verdict, why = best_pair(sigs, tools.thresholds)
        min_l2 = min((s.tiled_l2 for s in sigs), default=float("inf"))
        tile_v = "none"
        if sigs:
            jj = int(np.argmin([s.tiled_l2 for s in sigs]))
            if min_l2 <= tools.tile_delta:
                tile_v = "verbatim"
            elif max(s.tile_fraction for s in sigs) >= tools.tile_template_fraction:
                tile_v = "template"
            if verdict == "none":
                j = jj  # no copy: name the nearest image by Carlini's distance
        b = sigs[j] if j >= 0 else None
        out.append({
            "tiled_l2": fnum(min_l2), "tile_fraction": b.tile_fraction if b else None,
            "trimmed_l2": fnum(b.trimmed_l2) if b else None, "match_share": b.match_share if b else None,
            "phash_distance": int(b.phash_distance) if b else None,
            "layout_similarity": fnum(b.layout_similarity) if b else None,
            "copy_similarity": fnum(b.copy_similarity) if b else None,
            "verdict": verdict, "tile_verdict": tile_v, "signals": why,
            "best_key": ids[j][0] if j >= 0 else "", "best_shard": ids[j][1] if j >= 0 else "",
            "reference_source": ((ref_sources[j] if ref_sources else "caption") if j < len(refs) else "retrieval")
            if j >= 0 else "",
            "_image": images[j] if j >= 0 else None,
        })
    return out


def judge(run_dir: Path, evidence_dir: Path, cfg, tools: VerdictTools, variant: str, recs: list[dict],
          ims: list[Image.Image], refs: list[tuple[str, str]], ref_images: list[Image.Image],
          ref_emb: Optional[np.ndarray], cons_thr: float, evidence: bool,
          ref_sources: Optional[list[str]] = None) -> tuple[dict, list[dict]]:
    """(caption-variant result, one row per generation). ``ims``: the decoded images of ``recs`` with a path."""
    ok = [r for r in recs if r["path"]]
    meta = ("variant", "prompt", "seed", "path", "unet_evals", "error")
    judged = judge_images(tools, ims, refs, ref_images, ref_emb, ref_sources)
    gen_rows = [{**j, **{k: r[k] for k in meta}} for r, j in zip(ok, judged)]
    for r in recs:
        if not r["path"]:
            gen_rows.append({"tiled_l2": None, "verdict": "error", "tile_verdict": "error", "signals": [],
                             "best_key": "", "best_shard": "", "reference_source": "", "_image": None,
                             **{k: r[k] for k in meta}})
    gen_rows.sort(key=lambda g: g["seed"])
    consistency = ConsistencyDetector(cons_thr, cfg.clique_k, cfg.tile_grid, cfg.compare_max_side)
    clique = [ok[j]["seed"] for j in consistency.detect(ims).evidence["clique"]] if ims else []
    vc = sum(g["verdict"] == "verbatim" for g in gen_rows)
    tc = sum(g["verdict"] == "template" for g in gen_rows)
    n_err = sum(1 for r in recs if not r["path"])
    copies = [g for g in gen_rows if g["verdict"] in ("verbatim", "template")]
    reason = ""
    if not ims and recs:
        verdict = "error"
    elif vc or tc >= cfg.template_min_generations:
        verdict = "verbatim" if vc else "template"
        why = sorted({w for g in copies for w in g["signals"]})
        names = sorted({g["best_key"] for g in copies if g["reference_source"] == "retrieval"})
        reason = (f"{vc} verbatim / {tc} template of {len(ims)} generations (signals: {', '.join(why)})"
                  + (f"; copies of training images outside the caption's references: {', '.join(names[:5])}"
                     if names else ""))
    elif len(clique) >= consistency.k:
        verdict = "template"
        reason = (f"clique of {len(clique)}/{len(ims)} near-identical generations (tiled L2 <= {cons_thr:.3f}); "
                  "no training image of the cluster within delta")
    else:
        verdict = "none"
    ev_paths: list[str] = []
    if evidence and verdict in ("verbatim", "template") and cfg.evidence_per_caption > 0:
        ev_paths = write_evidence(run_dir, evidence_dir, cfg, variant, ok, ims, gen_rows, clique)
    for g in gen_rows:
        g.pop("_image", None)
    best = min(copies or [g for g in gen_rows if g["tiled_l2"] is not None] or [None],
               key=lambda g: (g["verdict"] != "verbatim", g["tiled_l2"] if g["tiled_l2"] is not None else np.inf)
               if g else 0)

    def agg(name, fn):
        vals = [g[name] for g in gen_rows if g.get(name) is not None]
        return fn(vals) if vals else None

    res = {
        "n_generations": len(ims), "largest_clique": len(clique),
        "min_tiled_l2": agg("tiled_l2", min), "best_distance": best["tiled_l2"] if best else None,
        "best_key": best["best_key"] if best else "", "best_shard": best["best_shard"] if best else "",
        "reference_source": best["reference_source"] if best else "",
        "max_copy_similarity": agg("copy_similarity", max), "min_trimmed_l2": agg("trimmed_l2", min),
        "min_phash_distance": agg("phash_distance", min), "max_layout_similarity": agg("layout_similarity", max),
        "retrieval_copies": sum(g["reference_source"] == "retrieval" for g in copies),
        "tile_rule_verbatim": sum(g["tile_verdict"] == "verbatim" for g in gen_rows),
        "verbatim_count": vc, "template_count": tc, "verdict": verdict, "reason": reason, "evidence": ev_paths,
        "n_errors": n_err,
        "error": (f"{n_err}/{len(recs)} generations failed: "
                  + next(r["error"] for r in recs if not r["path"])) if n_err else "",
        "clique_seeds": clique,
    }
    return res, gen_rows
