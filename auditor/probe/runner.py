"""The probe stage: prompt the model with risky captions and decide, with evidence, which outputs are copies.

Two tiers under one budget of UNet evaluations:

1. **Screen** every (risky caption, variant) cheaply, in risk-rank order: the white-box first-step score
   (:mod:`auditor.probe.whitebox`) when the model exposes a UNet, else ``screen_generations`` images checked
   against the cluster's training images and for near-identical pairs (``screen_clique_k``).
2. **Confirm** flagged variants, strongest screen evidence first, with ``confirm_generations`` images (the screen
   ones reused) against the training images of the caption's cluster (tiled L2, copy descriptor) and for a
   clique of near-identical generations.

Thresholds are calibrated on non-risky captions (singleton clusters of the same dataset, or a prompt file).

Layout of ``RUN_DIR/probe/``::

    results.parquet       one row per (caption, variant): RESULT_COLUMNS (the report/gate contract)
    generations.parquet   one row per generated image: GENERATION_COLUMNS
    provenance.json       model, weight hashes, scheduler, steps, guidance, dtype, seeds, thresholds, versions
    errors.parquet        training images that could not be loaded (key, shard, stage, error)
    calibration.json      null scores and thresholds (reused by a rerun)
    generations/<cid>/<variant>/<seed>.png, evidence/<cid>/*.png
    screen/<cid>.json     screen marker per caption; captions/<cid>.json final marker per caption

Paths in the parquet files are relative to RUN_DIR. A rerun with the same config skips captions whose marker
exists and ends with identical outputs; a different config is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image
from tqdm.auto import tqdm

from ..utils import (ErrorRecord, caption_hash, errors_frame, package_versions, remove_temporary_files, write_json,
                     write_parquet)
from .config import ProbeConfig
from .detectors import (ConsistencyDetector, CopyDescriptorDetector, TiledL2Detector, calibrate_threshold,
                        center_crop_to_aspect, capped_size, pairwise_tiled_l2, largest_clique)
from .generators import Generation, Generator, build_generator
from .variants import load_user_variants, make_variants

log = logging.getLogger(__name__)

PROBE_DIR = "probe"
FORMAT_VERSION = 1

RESULT_SCHEMA = pa.schema([
    ("caption", pa.string()), ("variant", pa.string()), ("prompt", pa.string()), ("rank", pa.int64()),
    ("cluster_id", pa.int64()), ("cluster_size", pa.int64()), ("seeds", pa.list_(pa.int64())),
    ("n_generations", pa.int64()), ("unet_evals", pa.int64()), ("tier", pa.string()),
    ("whitebox_score", pa.float64()), ("whitebox_flag", pa.bool_()), ("screen_flag", pa.bool_()),
    ("max_copy_similarity", pa.float64()), ("min_tiled_l2", pa.float64()), ("largest_clique", pa.int64()),
    ("verbatim_count", pa.int64()), ("template_count", pa.int64()), ("verdict", pa.string()),
    ("reason", pa.string()), ("best_key", pa.string()), ("best_shard", pa.string()),
    ("best_distance", pa.float64()), ("evidence", pa.list_(pa.string())), ("n_errors", pa.int64()),
    ("error", pa.string()),
])
RESULT_COLUMNS = [f.name for f in RESULT_SCHEMA]

GENERATION_SCHEMA = pa.schema([
    ("caption", pa.string()), ("variant", pa.string()), ("prompt", pa.string()), ("seed", pa.int64()),
    ("path", pa.string()), ("tiled_l2", pa.float64()), ("tile_fraction", pa.float64()),
    ("copy_similarity", pa.float64()), ("verdict", pa.string()), ("best_key", pa.string()),
    ("best_shard", pa.string()), ("unet_evals", pa.int64()), ("error", pa.string()),
])
GENERATION_COLUMNS = [f.name for f in GENERATION_SCHEMA]


def _cid(cluster_id: Any, caption: str) -> str:
    return hashlib.blake2b(f"{cluster_id}\0{caption}".encode("utf-8"), digest_size=6).hexdigest()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _fnum(x) -> Optional[float]:
    return None if x is None or not np.isfinite(x) else float(x)


def public_config(p: ProbeConfig) -> dict:
    """The config as written to outputs: http header values dropped (names kept), the URL without query/user."""
    from .generators.http import redacted_url

    d = p.model_dump(mode="json")
    d["http"]["headers"] = sorted(d["http"]["headers"])
    d["http"]["url"] = redacted_url(d["http"]["url"])
    return d


def _fingerprint(p: ProbeConfig) -> dict:
    d = public_config(p)
    d["http"].pop("url", None)  # rotating a key or moving the endpoint does not force a re-probe
    for k in ("progress", "budget_unet_evals", "top_n"):  # may change between resumed runs
        d.pop(k, None)
    d["diffusers"].pop("batch_size", None)
    d["diffusers"].pop("device", None)
    d["http"].pop("concurrency", None)
    d["http"].pop("timeout_s", None)
    return d


class _Budget:
    def __init__(self, limit: Optional[int]):
        self.limit = limit
        self.spent = 0

    def left(self) -> Optional[int]:
        return None if self.limit is None else max(0, self.limit - self.spent)

    def affords(self, cost: int) -> bool:
        return self.limit is None or self.spent + cost <= self.limit

    def images_affordable(self, per_image: int, want: int) -> int:
        if self.limit is None:
            return want
        return max(0, min(want, (self.limit - self.spent) // max(1, per_image)))


class ProbeRunner:
    def __init__(self, run_dir: str | Path, cfg: ProbeConfig, generator: Optional[Generator] = None):
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.out = self.run_dir / PROBE_DIR
        self.generator = generator
        self.errors: list[ErrorRecord] = []
        self.budget = _Budget(cfg.budget_unet_evals)
        self.tiled = TiledL2Detector(cfg.tiled_l2_threshold, cfg.tile_grid, cfg.template_tile_fraction,
                                     cfg.compare_max_side, cfg.reference_crop)
        self.copy: Optional[CopyDescriptorDetector] = None
        self.store = None
        self._table: Optional[pd.DataFrame] = None
        self._ref_cache: dict[tuple[str, str], Optional[Image.Image]] = {}

    # --- inputs ---------------------------------------------------------------------------------------
    def load_inputs(self) -> None:
        dedup = self.run_dir / "dedup"
        risk_p = dedup / "risk.parquet"
        if not risk_p.exists():
            raise FileNotFoundError(f"{risk_p} not found: run `auditor dedup` first")
        self.risk = pd.read_parquet(risk_p).sort_values("rank", kind="stable").reset_index(drop=True)
        man_p = dedup / "manifest.parquet"
        self.manifest = pd.read_parquet(man_p) if man_p.exists() else None
        try:
            from ..index.store import IndexStore

            self.store = IndexStore(self.run_dir)
        except FileNotFoundError:
            log.warning("%s has no index: training images unavailable, only reference-free detectors run",
                        self.run_dir)
        if self.store is not None and self.cfg.copy_similarity:
            try:
                self.copy = CopyDescriptorDetector.from_index(
                    self.store, self.cfg.copy_similarity_threshold, device=self.cfg.diffusers.device)
            except Exception as exc:  # noqa: BLE001 - an embedder that cannot be rebuilt disables the detector
                log.warning("copy-descriptor detector disabled: %s", exc)
                self.copy = None

    def table(self) -> pd.DataFrame:
        if self._table is None:
            if self.store is None:
                self._table = pd.DataFrame(columns=["row", "key", "shard", "caption", "caption_hash"])
            else:
                self._table = self.store.table(columns=["key", "shard", "caption", "caption_hash"])
        return self._table

    def selected(self) -> pd.DataFrame:
        r = self.risk
        if not self.cfg.include_placeholders and "is_placeholder" in r:
            r = r[~r["is_placeholder"].fillna(False).astype(bool)]
        r = r[r["caption"].fillna("").str.strip() != ""]
        # one probe per prompt: singletons sharing a duplicated caption are separate risk rows with one prompt;
        # the best-ranked row probes it, and every row with that caption supplies reference images (members())
        key = r["caption_hash"] if "caption_hash" in r else r["caption"].map(caption_hash)
        r = r.loc[~key.duplicated()]
        return r.head(self.cfg.top_n).reset_index(drop=True)

    def members(self, row) -> list[tuple[str, str]]:
        """(key, shard) of the training images of the caption's cluster, representative first."""
        refs: list[tuple[str, str]] = []
        if self.manifest is not None and "cluster_id" in self.manifest:
            m = self.manifest[self.manifest["cluster_id"] == row["cluster_id"]].copy()
            if len(m):
                m["_rep"] = (m["key"] == row.get("representative_key")) & (m["shard"] == row.get("representative_shard"))
                if "is_representative" in m:
                    m["_rep"] |= m["is_representative"].fillna(False).astype(bool)
                sim = m["similarity_to_representative"] if "similarity_to_representative" in m else 0.0
                m["_sim"] = pd.to_numeric(sim, errors="coerce").fillna(-1.0) if not np.isscalar(sim) else sim
                m = m.sort_values(["_rep", "_sim", "shard", "key"], ascending=[False, False, True, True])
                refs = list(zip(m["key"].astype(str), m["shard"].astype(str)))
        rep = (str(row.get("representative_key")), str(row.get("representative_shard")))
        if rep[0] not in ("None", "nan") and rep not in refs:
            refs.insert(0, rep)
        # other risk rows prompting the same caption (caption duplicated across different images)
        if "caption" in self.risk:
            hashes = self.risk["caption_hash"] if "caption_hash" in self.risk else self.risk["caption"].map(caption_hash)
            same = self.risk[(hashes == caption_hash(row.get("caption"))) & (self.risk["cluster_id"] != row["cluster_id"])]
            for r in same.itertuples():
                ref = (str(r.representative_key), str(r.representative_shard))
                if ref not in refs:
                    refs.append(ref)
        return refs[: self.cfg.max_references]

    def load_ref(self, key: str, shard: str) -> Optional[Image.Image]:
        k = (key, shard)
        if k not in self._ref_cache:
            img = None
            if self.store is not None:
                try:
                    img = self.store.load_image(shard, key).convert("RGB")
                except Exception as exc:  # noqa: BLE001 - recorded, the caption is still probed
                    self.errors.append(ErrorRecord(key, shard, "probe.reference", f"{type(exc).__name__}: {exc}"))
            if len(self._ref_cache) > 512:
                self._ref_cache.clear()
            self._ref_cache[k] = img
        return self._ref_cache[k]

    def ref_embeddings(self, refs: list[tuple[str, str]], images: list[Image.Image]) -> np.ndarray:
        """Stored index embeddings of the references (embedded now when missing)."""
        if getattr(self, "_pos", None) is None:
            t = self.table()
            self._pos = {(k, s): int(r) for k, s, r in zip(t["key"].astype(str), t["shard"].astype(str), t["row"])}
            self._emb = self.store.embeddings() if self.store is not None else np.zeros((0, 0))
        pos, emb = self._pos, self._emb
        out = []
        missing = []
        for i, ks in enumerate(refs):
            r = pos.get(ks)
            if r is not None and r < len(emb):
                out.append(np.asarray(emb[r], dtype=np.float32))
            else:
                out.append(None)
                missing.append(i)
        if missing:
            new = self.copy.embed_fn([images[i] for i in missing])
            for i, v in zip(missing, new):
                out[i] = v
        return np.stack(out) if out else np.zeros((0, 1), dtype=np.float32)

    # --- calibration ------------------------------------------------------------------------------------
    def null_captions(self, risky: set[str]) -> list[str]:
        n = self.cfg.calibration_captions
        if self.cfg.calibration_prompts_file:
            lines = Path(self.cfg.calibration_prompts_file).read_text(encoding="utf-8").splitlines()
            return [x.strip() for x in lines if x.strip()][: max(n, 1) if n else len(lines)]
        if n == 0:
            return []
        t = self.table()
        if not len(t):
            return []
        if self.manifest is not None and "cluster_size" in self.manifest:
            single = self.manifest[self.manifest["cluster_size"] == 1][["key", "shard"]].astype(str)
            t = t.merge(single, on=["key", "shard"], how="inner")
        t = t[(t["caption_hash"].fillna("") != "") & ~t["caption_hash"].isin(risky)]
        counts = self.table()["caption_hash"].value_counts()
        t = t[t["caption_hash"].map(counts).fillna(0) == 1]  # captions seen once in the dataset
        t = t.drop_duplicates("caption_hash")
        order = t["caption_hash"].map(
            lambda h: hashlib.blake2b(f"{self.cfg.seed}:{h}".encode(), digest_size=8).hexdigest())
        return t.assign(_o=order).sort_values("_o")["caption"].head(n).tolist()

    def calibrate(self, wb, risky: set[str]) -> dict:
        path = self.out / "calibration.json"
        if path.exists():
            cal = json.loads(path.read_text(encoding="utf-8"))
            self.budget.spent += int(cal.get("unet_evals", 0))
            return cal
        cfg = self.cfg
        cal: dict[str, Any] = {"whitebox_threshold": cfg.whitebox_threshold, "whitebox_null": [],
                               "consistency_threshold": cfg.consistency_threshold, "consistency_null": [],
                               "captions": [], "unet_evals": 0, "note": ""}
        caps = self.null_captions(risky)
        cal["captions"] = caps
        if wb is not None and cfg.whitebox_threshold is None:
            if caps:
                with tqdm(total=len(caps), desc="probe: calibrate (white-box)", unit="caption",
                          disable=not cfg.progress) as bar:
                    scores, ev = wb.scores(caps, self.wb_seeds(), cfg.whitebox_steps, cfg.diffusers.batch_size,
                                           progress=bar)
                cal["unet_evals"] += ev
                cal["whitebox_null"] = [float(s) for s in scores]
                cal["whitebox_threshold"] = calibrate_threshold(scores, cfg.whitebox_fpr)
            else:
                cal["note"] += "no non-risky captions to calibrate the white-box screen: every caption is flagged. "
        if wb is None and cfg.screen != "none" and cfg.consistency_threshold is None and caps:
            seeds = self.gen_seeds()[: cfg.screen_generations]
            gens = self.calibration_generations([(c, s) for c in caps for s in seeds], len(seeds), "consistency")
            cal["unet_evals"] += sum(g.unet_evals for g in gens)
            null = []
            for i in range(len(caps)):
                ims = [g.image for g in gens[i * len(seeds):(i + 1) * len(seeds)] if g.image is not None]
                d = pairwise_tiled_l2(ims, cfg.tile_grid, cfg.compare_max_side)
                null.extend(d[np.triu_indices(len(ims), 1)].tolist())
            cal["consistency_null"] = null
            if null:
                q = calibrate_threshold(null, cfg.consistency_fpr, higher_is_positive=False)
                cal["consistency_threshold"] = min(cfg.tiled_l2_threshold, q)
        cal["tiled_l2_threshold"] = cfg.tiled_l2_threshold
        cal["reference_null"] = []
        if cfg.reference_calibration_generations and caps:
            null = self.reference_null(caps, cal)
            cal["reference_null"] = null
            if null:
                q = calibrate_threshold(null, cfg.reference_fpr, higher_is_positive=False)
                cal["tiled_l2_threshold"] = min(cfg.tiled_l2_threshold, q)
        if cal["consistency_threshold"] is None:
            cal["consistency_threshold"] = cal["tiled_l2_threshold"]
        else:
            cal["consistency_threshold"] = min(cal["consistency_threshold"], cal["tiled_l2_threshold"])
        self.budget.spent += cal["unet_evals"]
        write_json(path, cal)
        return cal

    def reference_null(self, caps: list[str], cal: dict) -> list[float]:
        """Tiled L2 of generations for non-risky captions to their own training image: what 'not a copy'
        measures for this model (the chance level the copy threshold must stay below)."""
        t = self.table()
        if not len(t) or self.generator is None:
            return []
        first = t.drop_duplicates("caption").set_index("caption")
        refs = [(c, first.loc[c, "key"], first.loc[c, "shard"]) for c in caps if c in first.index]
        if not refs:
            return []
        images = self.store.load_images([(sh, k) for _, k, sh in refs]) if self.store is not None else {}
        seeds = self.gen_seeds()[: self.cfg.reference_calibration_generations]
        items = [(c, s) for c, k, sh in refs if (sh, k) in images for s in seeds]
        gens = self.calibration_generations(items, len(seeds), "reference")
        cal["unet_evals"] += sum(g.unet_evals for g in gens)
        by_cap = {c: images[(sh, k)] for c, k, sh in refs if (sh, k) in images}
        null = []
        for (c, _s), g in zip(items, gens):
            if g.image is not None:
                det = self.tiled.compare(g.image.convert("RGB"), [by_cap[c]])
                if np.isfinite(det.score):
                    null.append(float(det.score))
        return null

    def calibration_generations(self, items: list[tuple[str, int]], per_caption: int, what: str) -> list:
        """``generator.generate(items)`` (``per_caption`` seeds of each caption, in caption order) a few captions
        a call, with a bar of captions done and UNet evaluations spent: on CPU this is minutes of silence
        otherwise. An image depends only on (prompt, seed), not on the call it was made in."""
        step = per_caption * max(1, -(-self.cfg.diffusers.batch_size // max(1, per_caption)))
        gens: list = []
        with tqdm(total=len(items) // max(1, per_caption), desc=f"probe: calibrate ({what})", unit="caption",
                  disable=not self.cfg.progress) as bar:
            for i in range(0, len(items), step):
                gens += self.generator.generate(items[i:i + step])
                bar.set_postfix(unet_evals=sum(g.unet_evals for g in gens), refresh=False)
                bar.update(min(len(items), i + step) // max(1, per_caption) - bar.n)
        return gens

    def gen_seeds(self) -> list[int]:
        return [self.cfg.seed + j for j in range(max(self.cfg.confirm_generations, self.cfg.screen_generations))]

    def wb_seeds(self) -> list[int]:
        return [self.cfg.seed + j for j in range(self.cfg.whitebox_seeds)]

    # --- generation bookkeeping -----------------------------------------------------------------------------
    def gen_path(self, cid: str, variant: str, seed: int) -> Path:
        return self.out / "generations" / cid / _safe(variant) / f"{seed}.png"

    def generate(self, cid: str, items: list[tuple[str, str, int]]) -> list[dict]:
        """items: (variant, prompt, seed) -> records with the PNG written (or the error)."""
        from ..utils import atomic_path

        gens: list[Generation] = self.generator.generate([(p, s) for _, p, s in items]) if items else []
        recs = []
        for (variant, prompt, seed), g in zip(items, gens):
            path = ""
            if g.image is not None:
                p = self.gen_path(cid, variant, seed)
                with atomic_path(p) as tmp:
                    g.image.save(tmp, format="PNG")
                path = p.relative_to(self.run_dir).as_posix()
            self.budget.spent += g.unet_evals
            recs.append({"variant": variant, "prompt": prompt, "seed": int(seed), "path": path,
                         "unet_evals": int(g.unet_evals), "error": g.error or ""})
        return recs

    def open_gen(self, rec: dict) -> Optional[Image.Image]:
        if not rec["path"]:
            return None
        with Image.open(self.run_dir / rec["path"]) as im:
            return im.convert("RGB")

    # --- detection -------------------------------------------------------------------------------------------
    def detect(self, cid: str, variant: str, recs: list[dict], refs: list[tuple[str, str]],
               ref_images: list[Image.Image], ref_emb: Optional[np.ndarray], cons_thr: float,
               evidence: bool) -> tuple[dict, list[dict]]:
        cfg = self.cfg
        ok = [r for r in recs if r["path"]]
        ims = [self.open_gen(r) for r in ok]
        gen_rows = []
        best = (float("inf"), -1, -1)  # distance, generation index, ref index
        sims = None
        if self.copy is not None and ref_emb is not None and len(ref_images) and ims:
            sims = self.copy.similarities(self.copy.embed_fn(ims), ref_emb)
        for i, (r, im) in enumerate(zip(ok, ims)):
            det = self.tiled.compare(im, ref_images, ref_ids=refs) if ref_images else None
            d = det.score if det else float("nan")
            v = det.verdict if det else "none"
            cs = float(sims[i].max()) if sims is not None and sims.shape[1] else float("nan")
            if v == "none" and np.isfinite(cs) and cs >= cfg.copy_similarity_threshold:
                v = "template"
            ri = det.evidence["ref_index"] if det else -1
            if det and ri >= 0 and d < best[0]:
                best = (d, i, ri)
            gen_rows.append({"tiled_l2": _fnum(d), "tile_fraction": det.evidence["tile_fraction"] if det else None,
                             "copy_similarity": _fnum(cs), "verdict": v,
                             "best_key": refs[ri][0] if ri >= 0 else "", "best_shard": refs[ri][1] if ri >= 0 else "",
                             **{k: r[k] for k in ("variant", "prompt", "seed", "path", "unet_evals", "error")}})
        for r in recs:
            if not r["path"]:
                gen_rows.append({"tiled_l2": None, "tile_fraction": None, "copy_similarity": None, "verdict": "error",
                                 "best_key": "", "best_shard": "",
                                 **{k: r[k] for k in ("variant", "prompt", "seed", "path", "unet_evals", "error")}})
        gen_rows.sort(key=lambda g: g["seed"])
        dist = pairwise_tiled_l2(ims, cfg.tile_grid, cfg.compare_max_side)
        clique = [ok[j]["seed"] for j in largest_clique(dist, cons_thr)] if ims else []
        vc = sum(g["verdict"] == "verbatim" for g in gen_rows)
        tc = sum(g["verdict"] == "template" for g in gen_rows)
        n_err = sum(1 for r in recs if not r["path"])
        reason = ""
        if not ims and recs:
            verdict = "error"
        elif vc:
            verdict = "verbatim"
            reason = f"{vc}/{len(ims)} generations within tiled L2 {self.tiled.delta:.3f} of a training image"
        elif tc:
            verdict = "template"
            reason = (f"{tc}/{len(ims)} generations share >= {cfg.template_tile_fraction:.0%} of tiles with a "
                      f"training image or reach copy similarity {cfg.copy_similarity_threshold}")
        elif len(clique) >= cfg.clique_k:
            verdict = "template"
            reason = (f"clique of {len(clique)}/{len(ims)} near-identical generations (tiled L2 <= {cons_thr:.3f}); "
                      "no training image of the cluster within delta")
        else:
            verdict = "none"
        ev_paths: list[str] = []
        if evidence and verdict in ("verbatim", "template") and cfg.evidence_per_caption > 0:
            ev_paths = self.write_evidence(cid, variant, ok, ims, gen_rows, refs, ref_images, clique, dist)
        res = {
            "n_generations": len(ims), "largest_clique": len(clique),
            "min_tiled_l2": _fnum(best[0]), "best_distance": _fnum(best[0]),
            "best_key": refs[best[2]][0] if best[2] >= 0 else "", "best_shard": refs[best[2]][1] if best[2] >= 0 else "",
            "max_copy_similarity": _fnum(float(np.nanmax([g["copy_similarity"] if g["copy_similarity"] is not None
                                                          else np.nan for g in gen_rows] or [np.nan]))
                                         if any(g["copy_similarity"] is not None for g in gen_rows) else None),
            "verbatim_count": vc, "template_count": tc, "verdict": verdict, "reason": reason, "evidence": ev_paths,
            "n_errors": n_err,
            "error": (f"{n_err}/{len(recs)} generations failed: "
                      + next(r["error"] for r in recs if not r["path"])) if n_err else "",
            "clique_seeds": clique,
        }
        return res, gen_rows

    def write_evidence(self, cid, variant, ok, ims, gen_rows, refs, ref_images, clique, dist) -> list[str]:
        from ..utils import atomic_path

        out: list[str] = []
        by_seed = {g["seed"]: g for g in gen_rows}
        scored = [(by_seed[r["seed"]]["tiled_l2"], j) for j, r in enumerate(ok)
                  if by_seed[r["seed"]]["verdict"] in ("verbatim", "template") and by_seed[r["seed"]]["best_key"]]
        scored.sort(key=lambda x: (x[0] if x[0] is not None else np.inf, x[1]))
        folder = self.out / "evidence" / cid
        for d, j in scored[: self.cfg.evidence_per_caption]:
            g = by_seed[ok[j]["seed"]]
            ri = refs.index((g["best_key"], g["best_shard"]))
            ref = ref_images[ri]
            if self.cfg.reference_crop == "center":
                ref = center_crop_to_aspect(ref, ims[j].size[0] / ims[j].size[1])
            size = capped_size(*ref.size, self.cfg.compare_max_side)
            pair = Image.new("RGB", (size[0] * 2 + 8, size[1]), (255, 255, 255))
            pair.paste(ims[j].resize(size, Image.BICUBIC), (0, 0))
            pair.paste(ref.resize(size, Image.BICUBIC), (size[0] + 8, 0))
            p = folder / f"{_safe(variant)}_seed{ok[j]['seed']}_vs_{_safe(g['best_key'])}.png"
            with atomic_path(p) as tmp:
                pair.save(tmp, format="PNG")
            out.append(p.relative_to(self.run_dir).as_posix())
        if not out and clique:
            idx = [next(j for j, r in enumerate(ok) if r["seed"] == s) for s in clique[:8]]
            w, h = capped_size(*ims[idx[0]].size, 256)
            grid = Image.new("RGB", ((w + 4) * len(idx) - 4, h), (255, 255, 255))
            for n, j in enumerate(idx):
                grid.paste(ims[j].resize((w, h), Image.BICUBIC), (n * (w + 4), 0))
            p = folder / f"{_safe(variant)}_clique.png"
            with atomic_path(p) as tmp:
                grid.save(tmp, format="PNG")
            out.append(p.relative_to(self.run_dir).as_posix())
        return out

    # --- the run -------------------------------------------------------------------------------------------
    def run(self) -> pd.DataFrame:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        remove_temporary_files(self.out)  # what a killed run was writing
        fp_path = self.out / "fingerprint.json"
        fp = {"format_version": FORMAT_VERSION, "config": _fingerprint(cfg)}
        if fp_path.exists():
            old = json.loads(fp_path.read_text(encoding="utf-8"))
            if old != fp:
                from ..errors import ConfigMismatch, differences

                raise ConfigMismatch(f"{self.out} was probed with a different config; resume needs the same "
                                     f"config (delete {self.out} or use another run dir); changed: "
                                     + "; ".join(differences(old.get("config"), fp["config"], "probe")
                                                 or differences(old, fp)))
        self.load_inputs()
        sel = self.selected()
        if self.generator is None:
            self.generator = build_generator(cfg)
        wb = None
        if cfg.screen in ("auto", "whitebox"):
            wb = self.generator.whitebox()
            if wb is None and cfg.screen == "whitebox":
                raise ValueError(f"screen=whitebox needs a model with a UNet; the {self.generator.name} "
                                 "generator has none")
        if not fp_path.exists():  # only now: every input and the model are valid (a mistake must not lock the run)
            write_json(fp_path, fp)
        risky = {caption_hash(c) for c in self.risk["caption"].fillna("")}
        cal = self.calibrate(wb, risky)
        self.tiled.delta = float(cal.get("tiled_l2_threshold", cfg.tiled_l2_threshold))
        user = load_user_variants(cfg.variants_file)
        per_image = self.generator.nominal_unet_evals()
        seeds = self.gen_seeds()
        screen_mode = "whitebox" if wb is not None else ("none" if cfg.screen == "none" else "generations")

        captions = []
        for _, row in sel.iterrows():
            cap = str(row["caption"])
            captions.append({"row": row, "cid": _cid(row["cluster_id"], cap), "caption": cap,
                             "variants": make_variants(cap, cfg.variants, cfg.prefix_fractions, user)})

        # phase 1: screen every caption (markers: screen/<cid>.json)
        done_final = {c["cid"] for c in captions if (self.out / "captions" / f"{c['cid']}.json").exists()}
        screens: dict[str, dict] = {}
        for c in tqdm(captions, desc="probe: screen", unit="caption", disable=not cfg.progress):
            sp = self.out / "screen" / f"{c['cid']}.json"
            if sp.exists():
                screens[c["cid"]] = json.loads(sp.read_text(encoding="utf-8"))
                self.budget.spent += screens[c["cid"]]["unet_evals"]
                continue
            scr = {"caption": c["caption"], "mode": screen_mode, "variants": {}, "unet_evals": 0}
            for variant, prompt in c["variants"]:
                v: dict[str, Any] = {"prompt": prompt, "whitebox_score": None, "whitebox_flag": None,
                                     "flag": False, "priority": 0.0, "recs": [], "skipped": False, "unet_evals": 0}
                if screen_mode == "whitebox":
                    cost = 2 * cfg.whitebox_seeds * cfg.whitebox_steps
                    if not self.budget.affords(cost):
                        v["skipped"] = True
                    else:
                        s, ev = wb.scores([prompt], self.wb_seeds(), cfg.whitebox_steps, cfg.diffusers.batch_size)
                        self.budget.spent += ev
                        v["unet_evals"] = ev
                        thr = cal["whitebox_threshold"]
                        v["whitebox_score"] = float(s[0])
                        v["whitebox_flag"] = bool(thr is None or s[0] > thr)
                        v["flag"] = v["whitebox_flag"]
                        v["priority"] = float(s[0] - (thr or 0.0))
                elif screen_mode == "generations":
                    n = self.budget.images_affordable(per_image, cfg.screen_generations)
                    if n < cfg.screen_generations:
                        v["skipped"] = True
                    else:
                        v["recs"] = self.generate(c["cid"], [(variant, prompt, s) for s in seeds[:n]])
                        v["unet_evals"] = sum(r["unet_evals"] for r in v["recs"])
                        refs, ref_images, ref_emb = self.references(c["row"])
                        res, _ = self.detect(c["cid"], variant, v["recs"], refs, ref_images, ref_emb,
                                             cal["consistency_threshold"], evidence=False)
                        v["flag"] = bool(res["largest_clique"] >= cfg.screen_clique_k
                                         or res["verdict"] in ("verbatim", "template"))
                        v["priority"] = float(res["largest_clique"]) - (res["min_tiled_l2"] or 0.0)
                else:
                    v["flag"] = True
                scr["unet_evals"] += v["unet_evals"]
                scr["variants"][variant] = v
            write_json(sp, scr)
            screens[c["cid"]] = json.loads(sp.read_text(encoding="utf-8"))

        # phase 2: confirm flagged captions, strongest screen evidence first (markers: captions/<cid>.json)
        def prio(c):
            vs = screens[c["cid"]]["variants"].values()
            flagged = [v["priority"] for v in vs if v["flag"]]
            return (0 if flagged else 1, -max(flagged) if flagged else 0.0, int(c["row"]["rank"]))

        for c in sorted(captions, key=prio):
            if c["cid"] in done_final:
                m = json.loads((self.out / "captions" / f"{c['cid']}.json").read_text(encoding="utf-8"))
                self.budget.spent += m["confirm_unet_evals"]
        for c in tqdm(sorted(captions, key=prio), desc="probe: confirm", unit="caption", disable=not cfg.progress):
            if c["cid"] in done_final:
                continue
            self.finish_caption(c, screens[c["cid"]], cal, seeds, per_image)

        return self.finalize(captions, cal, seeds, screen_mode)

    def references(self, row):
        key = ("refs", row["cluster_id"])
        if getattr(self, "_refs_key", None) == key:
            return self._refs_val
        refs, imgs = [], []
        for k, s in self.members(row):
            im = self.load_ref(k, s)
            if im is not None:
                refs.append((k, s))
                imgs.append(im)
        emb = self.ref_embeddings(refs, imgs) if (self.copy is not None and refs) else None
        self._refs_key, self._refs_val = key, (refs, imgs, emb)
        return refs, imgs, emb

    def finish_caption(self, c: dict, scr: dict, cal: dict, seeds: list[int], per_image: int) -> None:
        cfg = self.cfg
        row = c["row"]
        refs, ref_images, ref_emb = self.references(row)
        rows, gens = [], []
        confirm_evals = 0
        for variant, prompt in c["variants"]:
            v = scr["variants"][variant]
            recs = list(v["recs"])
            tier = "skipped" if v["skipped"] else "screen"
            new_evals = 0
            note = "skipped: UNet budget exhausted" if v["skipped"] else ""
            if v["flag"] and not v["skipped"]:
                have = {r["seed"] for r in recs}
                want = [s for s in seeds[: cfg.confirm_generations] if s not in have]
                n = self.budget.images_affordable(per_image, len(want))
                if n < len(want):
                    note = f"confirm cut to {n} of {len(want)} new generations: UNet budget exhausted"
                new = self.generate(c["cid"], [(variant, prompt, s) for s in want[:n]])
                new_evals = sum(r["unet_evals"] for r in new)
                confirm_evals += new_evals
                recs += new
                tier = "confirm"
            res, grows = self.detect(c["cid"], variant, recs, refs, ref_images, ref_emb,
                                     cal["consistency_threshold"], evidence=True)
            if v["skipped"]:
                res["verdict"] = "error"
            err = "; ".join(x for x in (note, res["error"]) if x)
            rows.append({
                "caption": c["caption"], "variant": variant, "prompt": prompt, "rank": int(row["rank"]),
                "cluster_id": int(row["cluster_id"]), "cluster_size": int(row["cluster_size"]),
                "seeds": sorted(r["seed"] for r in recs), "n_generations": res["n_generations"],
                "unet_evals": int(v["unet_evals"]) + new_evals,
                "tier": tier, "whitebox_score": v["whitebox_score"], "whitebox_flag": v["whitebox_flag"],
                "screen_flag": bool(v["flag"]), "max_copy_similarity": res["max_copy_similarity"],
                "min_tiled_l2": res["min_tiled_l2"], "largest_clique": res["largest_clique"],
                "verbatim_count": res["verbatim_count"], "template_count": res["template_count"],
                "verdict": res["verdict"], "reason": res["reason"], "best_key": res["best_key"],
                "best_shard": res["best_shard"], "best_distance": res["best_distance"], "evidence": res["evidence"],
                "n_errors": res["n_errors"], "error": err,
            })
            for g in grows:
                g["caption"] = c["caption"]
            gens.extend(grows)
        if not cfg.save_generations:
            shutil.rmtree(self.out / "generations" / c["cid"], ignore_errors=True)
            for g in gens:
                g["path"] = ""
        write_json(self.out / "captions" / f"{c['cid']}.json",
                   {"rows": rows, "generations": gens, "confirm_unet_evals": confirm_evals,
                    "errors": [e.__dict__ for e in self.errors if e.stage == "probe.reference"]})

    def finalize(self, captions: list[dict], cal: dict, seeds: list[int], screen_mode: str) -> pd.DataFrame:
        cfg = self.cfg
        rows, gens, errs = [], [], []
        for c in captions:  # risk-rank order
            m = json.loads((self.out / "captions" / f"{c['cid']}.json").read_text(encoding="utf-8"))
            rows += m["rows"]
            gens += m["generations"]
            errs += m.get("errors", [])
        results = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA) if rows else RESULT_SCHEMA.empty_table()
        generations = (pa.Table.from_pylist([{k: g.get(k) for k in GENERATION_COLUMNS} for g in gens],
                                            schema=GENERATION_SCHEMA) if gens else GENERATION_SCHEMA.empty_table())
        write_parquet(self.out / "results.parquet", results)
        write_parquet(self.out / "generations.parquet", generations)
        uniq = {(e["key"], e["shard"], e["stage"], e["error"]) for e in errs}
        write_parquet(self.out / "errors.parquet",
                      errors_frame([ErrorRecord(*u) for u in sorted(uniq)]))
        total = int(cal.get("unet_evals", 0)) + int(sum(r["unet_evals"] for r in rows))
        prov = {
            "format_version": FORMAT_VERSION,
            "generator": self.generator.provenance(),
            "steps": cfg.steps, "guidance_scale": cfg.guidance_scale, "width": cfg.width, "height": cfg.height,
            "negative_prompt": cfg.negative_prompt,
            "seeds": {"generation": seeds[: cfg.confirm_generations], "screen": seeds[: cfg.screen_generations],
                      "whitebox": self.wb_seeds()},
            "screen": screen_mode,
            "thresholds": {"tiled_l2": self.tiled.delta, "tiled_l2_configured": cfg.tiled_l2_threshold,
                           "reference_fpr": cfg.reference_fpr, "tile_grid": cfg.tile_grid,
                           "template_tile_fraction": cfg.template_tile_fraction,
                           "copy_similarity": cfg.copy_similarity_threshold, "clique_k": cfg.clique_k,
                           "consistency": cal["consistency_threshold"], "whitebox": cal["whitebox_threshold"],
                           "whitebox_fpr": cfg.whitebox_fpr, "consistency_fpr": cfg.consistency_fpr},
            "calibration": {"captions": len(cal["captions"]), "unet_evals": cal["unet_evals"], "note": cal["note"]},
            "copy_descriptor": self.copy.describe if self.copy is not None else None,
            "unet_evals": {"total": total, "calibration": int(cal.get("unet_evals", 0)),
                           "probe": total - int(cal.get("unet_evals", 0)), "budget": cfg.budget_unet_evals},
            "counts": {"captions": len(captions), "rows": len(rows),
                       **{v: sum(r["verdict"] == v for r in rows) for v in ("verbatim", "template", "none", "error")}},
            "config": public_config(cfg),
            "versions": package_versions(),
        }
        write_json(self.out / "provenance.json", prov)
        return results.to_pandas()


def run_probe(run_dir: str | Path, cfg=None, generator: Optional[Generator] = None) -> pd.DataFrame:
    """Probe ``run_dir`` (needs dedup/risk.parquet; uses dedup/manifest.parquet and the index when present).
    ``cfg``: an AuditorConfig, a ProbeConfig or None (defaults)."""
    from ..config import AuditorConfig

    if cfg is None:
        pcfg = ProbeConfig()
    elif isinstance(cfg, AuditorConfig):
        pcfg = cfg.probe
    else:
        pcfg = cfg
    runner = ProbeRunner(run_dir, pcfg, generator)
    try:
        return runner.run()
    finally:
        if generator is None and runner.generator is not None:
            runner.generator.close()
