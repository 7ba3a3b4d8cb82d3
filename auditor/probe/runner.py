"""The probe stage: prompt the model with risky captions and decide, with evidence, which outputs are copies.

Two tiers under one budget of UNet evaluations:

1. **Screen** every (risky caption, variant) cheaply, in risk-rank order: the white-box first-step score
   (:mod:`auditor.probe.whitebox`) when the model exposes a UNet, else ``screen_generations`` images checked
   against the cluster's training images and for near-identical pairs (``screen_clique_k``).
2. **Confirm** flagged variants, strongest screen evidence first (after the white-box screen the unflagged ones
   follow by score unless ``whitebox_gate``), with ``confirm_generations`` images (the screen ones reused) against
   the caption's training images and the whole index (the fused verdict) and for a clique of near-identical ones.

Thresholds are calibrated on non-risky captions (singleton clusters of the same dataset, or a prompt file).

Layout of ``RUN_DIR/probe/``::

    results.parquet       one row per (caption, variant): RESULT_COLUMNS (the report/gate contract)
    generations.parquet   one row per generated image: GENERATION_COLUMNS
    provenance.json       model, weight hashes, scheduler, steps, guidance, dtype, seeds, thresholds, versions
    errors.parquet        training images and --prompts references that could not be had (key, shard, stage, error)
    calibration.json      null scores and thresholds (reused by a rerun)
    generations/<cid>/<variant>/<seed>.png, evidence/<cid>/*.png, references/<sha256 of a --prompts URL>
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

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ..rundir import GENERATIONS, PROBE_FINGERPRINT, PROVENANCE, RESULTS, RunDir, check_resume
from ..utils import (ErrorRecord, caption_hash, errors_frame, package_versions, remove_temporary_files, write_json,
                     write_parquet)
from .budget import Budget, confirm_reach, confirmed, new_seeds
from .config import ProbeConfig, fingerprint, public_config
from .detectors import CopyDescriptorDetector, TiledL2Detector
from .generators import Generation, Generator, build_generator
from .evidence import safe_name as _safe
from .calibration import Calibration, Calibrator
from .prompts import load_prompts, prompts_as_risk
from .prompt_refs import PromptReferences
from .references import References
from .fusion import Thresholds
from .retrieval import Retriever
from .verdict import VerdictTools, judge
from .whitebox import select_whitebox
from .schema import (FORMAT_VERSION, GENERATION_COLUMNS, PROBE_DIR, RESULT_COLUMNS,  # noqa: F401 (columns:
                     generations_table, results_table)  # re-exported for the tests)
from .variants import load_user_variants, make_variants

log = logging.getLogger(__name__)

def _cid(cluster_id: Any, caption: str) -> str:
    return hashlib.blake2b(f"{cluster_id}\0{caption}".encode("utf-8"), digest_size=6).hexdigest()


class ProbeRunner:
    def __init__(self, run_dir: str | Path, cfg: ProbeConfig, generator: Optional[Generator] = None):
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.out = self.run_dir / PROBE_DIR
        self.generator = generator
        self.errors: list[ErrorRecord] = []
        self.budget = Budget(cfg.budget_unet_evals)
        self.tiled = TiledL2Detector(cfg.tiled_l2_threshold, cfg.tile_grid, cfg.template_tile_fraction,
                                     cfg.compare_max_side, cfg.reference_crop)
        self.copy: Optional[CopyDescriptorDetector] = None
        self.tools = VerdictTools.for_config(cfg)
        self.retriever: Optional[Retriever] = None
        self.store = None
        self.risk: Optional[pd.DataFrame] = None
        self.manifest: Optional[pd.DataFrame] = None
        self.refs: Optional[References] = None

    # --- inputs ---------------------------------------------------------------------------------------
    def load_inputs(self) -> None:
        run = RunDir(self.run_dir)
        risk_p = run.risk
        if self.cfg.prompts_file:
            self.risk = prompts_as_risk(load_prompts(self.cfg.prompts_file))
        elif not risk_p.exists():
            raise FileNotFoundError(f"{risk_p} not found: run `auditor dedup` first (or give --prompts FILE)")
        else:
            self.risk = pd.read_parquet(risk_p).sort_values("rank", kind="stable").reset_index(drop=True)
        man_p = run.manifest
        self.manifest = pd.read_parquet(man_p) if (man_p.exists() and not self.cfg.prompts_file) else None
        try:
            from ..index.store import IndexStore

            self.store = IndexStore(self.run_dir)
        except FileNotFoundError:
            log.warning("%s has no index: training images unavailable, only reference-free detectors (and a "
                        "--prompts file's own references) run", self.run_dir)
        if self.store is not None and self.cfg.copy_similarity:
            try:
                thr = self.cfg.copy_similarity_threshold  # the verdict uses fusion.Thresholds, calibrated
                self.copy = CopyDescriptorDetector.from_index(self.store, 0.5 if thr is None else thr,
                                                              device=self.cfg.diffusers.device)
            except Exception as exc:  # noqa: BLE001 - an embedder that cannot be rebuilt disables the detector
                log.warning("copy-descriptor detector disabled: %s", exc)
                self.copy = None
        self.refs = References(self.store, self.manifest, self.risk, self.cfg.max_references, self.errors)
        self.refs.copy = self.copy
        if self.cfg.prompts_file:  # the file's own reference images (prompt_refs.py), fetched into probe/references/
            self.refs.prompt_refs = PromptReferences(self.cfg, run.prompt_references,
                                                     Path(self.cfg.prompts_file).parent, self.store, self.errors,
                                                     load_index_image=self.refs.load)
        self.tools.copy = self.copy
        self.retriever = Retriever.maybe(self.run_dir, self.store, self.cfg)
        if self.retriever is not None:
            self.tools.retrieve = lambda ims: [self.refs.resolve(p) for p in self.retriever.nearest(ims)]

    def table(self) -> pd.DataFrame:
        return self.refs.table()

    def members(self, row) -> list[tuple[str, str]]:
        return self.refs.members(row)

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

    # --- calibration (calibration.py) -------------------------------------------------------------------
    def calibrate(self, wb, risky: set[str]) -> Calibration:
        return Calibrator(self).calibrate(wb, risky)

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

    # --- detection (verdict.py) ------------------------------------------------------------------------------
    def detect(self, cid: str, variant: str, recs: list[dict], row, cons_thr: float,
               evidence: bool) -> tuple[dict, list[dict]]:
        """Judge ``recs`` against ``row``'s references (:meth:`References.of`, with their sources)."""
        ims = [self.open_gen(r) for r in recs if r["path"]]
        refs, ref_images, ref_emb = self.refs.of(row) if ims else ([], [], None)  # no image: nothing to fetch
        return judge(self.run_dir, self.out / "evidence" / cid, self.cfg, self.tools, variant, recs, ims,
                     refs, ref_images, ref_emb, cons_thr, evidence, ref_sources=self.refs.sources(row) if ims else [])

    # --- the run -------------------------------------------------------------------------------------------
    def run(self) -> pd.DataFrame:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        remove_temporary_files(self.out)  # what a killed run was writing
        fp_path = self.out / PROBE_FINGERPRINT
        fp = {"format_version": FORMAT_VERSION, "config": fingerprint(cfg)}
        if fp_path.exists():
            check_resume(json.loads(fp_path.read_text(encoding="utf-8")), fp,
                         f"{self.out} was probed with a different config; resume needs the same config (delete "
                         f"{self.out} or use another run dir)", "probe", section="config")
        self.load_inputs()
        sel = self.selected()
        if self.generator is None:
            self.generator = build_generator(cfg)
        wb, self.screen_note = select_whitebox(self.generator, cfg.screen)
        if not fp_path.exists():  # only now: every input and the model are valid (a mistake must not lock the run)
            write_json(fp_path, fp)
        risky = {caption_hash(c) for c in self.risk["caption"].fillna("")}
        cal = self.calibrate(wb, risky)
        self.tiled.delta = float(cal.tiled_l2_threshold if cal.tiled_l2_threshold is not None else cfg.tiled_l2_threshold)
        self.tools.tile_delta = self.tiled.delta
        self.tools.thresholds = Thresholds.from_dict(cal.thresholds)
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
                        thr = cal.whitebox_threshold
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
                        res, _ = self.detect(c["cid"], variant, v["recs"], c["row"], cal.consistency_threshold,
                                             evidence=False)
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
            flagged = [v["priority"] for v in vs if v["flag"]]  # then the others, closest to a flag first
            return (0 if flagged else 1, -max(flagged or [v["priority"] for v in vs] or [0.0]), int(c["row"]["rank"]))

        order = sorted(captions, key=prio)
        for c in order:
            if c["cid"] in done_final:
                m = json.loads((self.out / "captions" / f"{c['cid']}.json").read_text(encoding="utf-8"))
                self.budget.spent += m["confirm_unet_evals"]
        if self.refs.prompt_refs is not None:  # the references of the captions confirm will judge, concurrently
            todo = confirm_reach([c for c in order if c["cid"] not in done_final], screens, seeds,
                                 cfg.confirm_generations, per_image, self.budget, cfg.whitebox_gate)
            self.refs.prompt_refs.prefetch([(c["row"].get("reference"), int(c["row"]["cluster_id"])) for c in todo])
        for c in tqdm(order, desc="probe: confirm", unit="caption", disable=not cfg.progress):
            if c["cid"] in done_final:
                continue
            self.finish_caption(c, screens[c["cid"]], cal, seeds, per_image)

        return self.finalize(captions, cal, seeds, screen_mode)

    def finish_caption(self, c: dict, scr: dict, cal: Calibration, seeds: list[int], per_image: int) -> None:
        cfg = self.cfg
        row = c["row"]
        rows, gens = [], []
        confirm_evals = 0
        for variant, prompt in c["variants"]:
            v = scr["variants"][variant]
            recs = list(v["recs"])
            tier = "skipped" if v["skipped"] else "screen"
            new_evals = 0
            note = "skipped: UNet budget exhausted" if v["skipped"] else ""
            if confirmed(v, scr, cfg.whitebox_gate):  # the white-box screen orders the tier, gates it on request
                want = new_seeds(recs, seeds, cfg.confirm_generations)
                n = self.budget.images_affordable(per_image, len(want))
                if n < len(want):
                    note = f"confirm cut to {n} of {len(want)} new generations: UNet budget exhausted"
                new = self.generate(c["cid"], [(variant, prompt, s) for s in want[:n]])
                new_evals = sum(r["unet_evals"] for r in new)
                confirm_evals += new_evals
                recs += new
                tier = "confirm"
            res, grows = self.detect(c["cid"], variant, recs, row, cal.consistency_threshold, evidence=True)
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
                **{k: res[k] for k in ("min_trimmed_l2", "min_phash_distance", "max_layout_similarity",
                                       "reference_source", "retrieval_copies", "tile_rule_verbatim")},
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

    def finalize(self, captions: list[dict], cal: Calibration, seeds: list[int], screen_mode: str) -> pd.DataFrame:
        cfg = self.cfg
        rows, gens, errs = [], [], []
        for c in captions:  # risk-rank order
            m = json.loads((self.out / "captions" / f"{c['cid']}.json").read_text(encoding="utf-8"))
            rows += m["rows"]
            gens += m["generations"]
            errs += m.get("errors", [])
        results = results_table(rows)
        generations = generations_table(gens)
        write_parquet(self.out / RESULTS, results)
        write_parquet(self.out / GENERATIONS, generations)
        uniq = {(e["key"], e["shard"], e["stage"], e["error"]) for e in errs}
        write_parquet(self.out / "errors.parquet",
                      errors_frame([ErrorRecord(*u) for u in sorted(uniq)]))
        total = int(cal.unet_evals) + int(sum(r["unet_evals"] for r in rows))
        prov = {
            "format_version": FORMAT_VERSION,
            "generator": self.generator.provenance(),
            "steps": cfg.steps, "guidance_scale": cfg.guidance_scale, "width": cfg.width, "height": cfg.height,
            "negative_prompt": cfg.negative_prompt,
            "seeds": {"generation": seeds[: cfg.confirm_generations], "screen": seeds[: cfg.screen_generations],
                      "whitebox": self.wb_seeds()},
            "screen": screen_mode, "screen_note": self.screen_note,
            "thresholds": {"tiled_l2": self.tiled.delta, "tiled_l2_configured": cfg.tiled_l2_threshold,
                           "reference_fpr": cfg.reference_fpr, "tile_grid": cfg.tile_grid,
                           "template_tile_fraction": cfg.template_tile_fraction,
                           "copy_similarity": self.tools.thresholds.copy_verbatim, "clique_k": cfg.clique_k,
                           "consistency": cal.consistency_threshold, "whitebox": cal.whitebox_threshold,
                           "whitebox_fpr": cfg.whitebox_fpr, "consistency_fpr": cfg.consistency_fpr,
                           "fused": self.tools.thresholds.to_dict()},
            "calibration": {"captions": len(cal.captions), "unet_evals": cal.unet_evals, "note": cal.note},
            "copy_descriptor": self.copy.describe if self.copy is not None else None,
            "unet_evals": {"total": total, "calibration": int(cal.unet_evals),
                           "probe": total - int(cal.unet_evals), "budget": cfg.budget_unet_evals},
            "counts": {"captions": len(captions), "rows": len(rows),
                       **{v: sum(r["verdict"] == v for r in rows) for v in ("verbatim", "template", "none", "error")}},
            "config": public_config(cfg),
            "versions": package_versions(),
        }
        write_json(self.out / PROVENANCE, prov)
        return results.to_pandas()


def run_probe(run_dir: str | Path, cfg: Optional[ProbeConfig] = None,
              generator: Optional[Generator] = None) -> pd.DataFrame:
    """Probe ``run_dir`` (needs dedup/risk.parquet; uses dedup/manifest.parquet and the index when present).
    ``cfg``: the probe's own config section (defaults when None). A whole config with a ``probe`` section is still
    accepted for older callers, without importing it (the config flows down)."""
    if cfg is None:
        pcfg = ProbeConfig()
    elif isinstance(cfg, ProbeConfig):
        pcfg = cfg
    else:
        pcfg = cfg.probe
    runner = ProbeRunner(run_dir, pcfg, generator)
    try:
        return runner.run()
    finally:
        if generator is None and runner.generator is not None:
            runner.generator.close()
