"""Verdicts of a caption variant's generations: per generation, tiled L2 to the references (verbatim / template
by the tile rule) and the copy descriptor's similarity (template at its threshold); per caption variant, the
strongest kind found, else a clique of near-identical generations (:class:`ConsistencyDetector`, the one clique
implementation) of at least ``clique_k``, named ``template`` (a copy with no training image to show)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from .detectors import ConsistencyDetector, CopyDescriptorDetector, TiledL2Detector
from .evidence import write_evidence


def fnum(x) -> Optional[float]:
    return None if x is None or not np.isfinite(x) else float(x)


def judge(run_dir: Path, evidence_dir: Path, cfg, tiled: TiledL2Detector, copy: Optional[CopyDescriptorDetector],
          variant: str, recs: list[dict], ims: list[Image.Image], refs: list[tuple[str, str]],
          ref_images: list[Image.Image], ref_emb: Optional[np.ndarray], cons_thr: float,
          evidence: bool) -> tuple[dict, list[dict]]:
    """(caption-variant result, one row per generation). ``ims``: the decoded images of ``recs`` with a path."""
    ok = [r for r in recs if r["path"]]
    gen_rows = []
    best = (float("inf"), -1, -1)  # distance, generation index, ref index
    sims = None
    if copy is not None and ref_emb is not None and len(ref_images) and ims:
        sims = copy.similarities(copy.embed_fn(ims), ref_emb)
    for i, (r, im) in enumerate(zip(ok, ims)):
        det = tiled.compare(im, ref_images, ref_ids=refs) if ref_images else None
        d = det.score if det else float("nan")
        v = det.verdict if det else "none"
        cs = float(sims[i].max()) if sims is not None and sims.shape[1] else float("nan")
        if v == "none" and np.isfinite(cs) and cs >= cfg.copy_similarity_threshold:
            v = "template"
        ri = det.evidence["ref_index"] if det else -1
        if det and ri >= 0 and d < best[0]:
            best = (d, i, ri)
        gen_rows.append({"tiled_l2": fnum(d), "tile_fraction": det.evidence["tile_fraction"] if det else None,
                         "copy_similarity": fnum(cs), "verdict": v,
                         "best_key": refs[ri][0] if ri >= 0 else "", "best_shard": refs[ri][1] if ri >= 0 else "",
                         **{k: r[k] for k in ("variant", "prompt", "seed", "path", "unet_evals", "error")}})
    for r in recs:
        if not r["path"]:
            gen_rows.append({"tiled_l2": None, "tile_fraction": None, "copy_similarity": None, "verdict": "error",
                             "best_key": "", "best_shard": "",
                             **{k: r[k] for k in ("variant", "prompt", "seed", "path", "unet_evals", "error")}})
    gen_rows.sort(key=lambda g: g["seed"])
    consistency = ConsistencyDetector(cons_thr, cfg.clique_k, cfg.tile_grid, cfg.compare_max_side)
    clique = [ok[j]["seed"] for j in consistency.detect(ims).evidence["clique"]] if ims else []
    vc = sum(g["verdict"] == "verbatim" for g in gen_rows)
    tc = sum(g["verdict"] == "template" for g in gen_rows)
    n_err = sum(1 for r in recs if not r["path"])
    reason = ""
    if not ims and recs:
        verdict = "error"
    elif vc:
        verdict = "verbatim"
        reason = f"{vc}/{len(ims)} generations within tiled L2 {tiled.delta:.3f} of a training image"
    elif tc:
        verdict = "template"
        reason = (f"{tc}/{len(ims)} generations share >= {cfg.template_tile_fraction:.0%} of tiles with a "
                  f"training image or reach copy similarity {cfg.copy_similarity_threshold}")
    elif len(clique) >= consistency.k:
        verdict = "template"
        reason = (f"clique of {len(clique)}/{len(ims)} near-identical generations (tiled L2 <= {cons_thr:.3f}); "
                  "no training image of the cluster within delta")
    else:
        verdict = "none"
    ev_paths: list[str] = []
    if evidence and verdict in ("verbatim", "template") and cfg.evidence_per_caption > 0:
        ev_paths = write_evidence(run_dir, evidence_dir, cfg, variant, ok, ims, gen_rows, refs, ref_images,
                                  clique)
    res = {
        "n_generations": len(ims), "largest_clique": len(clique),
        "min_tiled_l2": fnum(best[0]), "best_distance": fnum(best[0]),
        "best_key": refs[best[2]][0] if best[2] >= 0 else "", "best_shard": refs[best[2]][1] if best[2] >= 0 else "",
        "max_copy_similarity": fnum(float(np.nanmax([g["copy_similarity"] if g["copy_similarity"] is not None
                                                      else np.nan for g in gen_rows] or [np.nan]))
                                     if any(g["copy_similarity"] is not None for g in gen_rows) else None),
        "verbatim_count": vc, "template_count": tc, "verdict": verdict, "reason": reason, "evidence": ev_paths,
        "n_errors": n_err,
        "error": (f"{n_err}/{len(recs)} generations failed: "
                  + next(r["error"] for r in recs if not r["path"])) if n_err else "",
        "clique_seeds": clique,
    }
    return res, gen_rows
