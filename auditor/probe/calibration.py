"""Calibration of the probe's thresholds on non-risky captions (singletons of the dataset whose caption is seen
once, or a prompt file): white-box null scores, consistency (pairwise tiled L2 of generations of one caption) and
the reference null (generations of a non-risky caption against its own training image). Written once to
``probe/calibration.json`` and reused by a rerun (:class:`Calibration` round-trips through JSON)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from ..utils import write_json
from .detectors import calibrate_threshold, pairwise_tiled_l2
from .fusion import calibrate as calibrate_fused
from .fusion import null_of


@dataclass
class Calibration:
    """What ``calibration.json`` holds (field order = the file's key order)."""

    whitebox_threshold: Optional[float] = None
    whitebox_null: list = field(default_factory=list)
    consistency_threshold: Optional[float] = None
    consistency_null: list = field(default_factory=list)
    captions: list = field(default_factory=list)
    unet_evals: int = 0
    note: str = ""
    tiled_l2_threshold: Optional[float] = None
    reference_null: list = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)     # fusion.Thresholds of the fused verdict
    signal_null: list = field(default_factory=list)   # per null generation: fusion.null_of (most copy-like values)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, text: str) -> "Calibration":
        return cls.from_dict(json.loads(text))


class Calibrator:
    """Calibrates with the runner's generator, references, tiled detector and budget."""

    def __init__(self, runner):
        self.r = runner
        self.cfg = runner.cfg
        self.out = runner.out

    def null_captions(self, risky: set[str]) -> list[str]:
        n = self.cfg.calibration_captions
        if self.cfg.calibration_prompts_file:
            lines = Path(self.cfg.calibration_prompts_file).read_text(encoding="utf-8").splitlines()
            return [x.strip() for x in lines if x.strip()][: max(n, 1) if n else len(lines)]
        if n == 0:
            return []
        t = self.r.table()
        if not len(t):
            return []
        if self.r.manifest is not None and "cluster_size" in self.r.manifest:
            single = self.r.manifest[self.r.manifest["cluster_size"] == 1][["key", "shard"]].astype(str)
            t = t.merge(single, on=["key", "shard"], how="inner")
        t = t[(t["caption_hash"].fillna("") != "") & ~t["caption_hash"].isin(risky)]
        counts = self.r.table()["caption_hash"].value_counts()
        t = t[t["caption_hash"].map(counts).fillna(0) == 1]  # captions seen once in the dataset
        t = t.drop_duplicates("caption_hash")
        order = t["caption_hash"].map(
            lambda h: hashlib.blake2b(f"{self.cfg.seed}:{h}".encode(), digest_size=8).hexdigest())
        return t.assign(_o=order).sort_values("_o")["caption"].head(n).tolist()

    def calibrate(self, wb, risky: set[str]) -> Calibration:
        path = self.out / "calibration.json"
        if path.exists():
            cal = Calibration.from_json(path.read_text(encoding="utf-8"))
            self.r.budget.spent += int(cal.unet_evals)
            return cal
        cfg = self.cfg
        cal = Calibration(whitebox_threshold=cfg.whitebox_threshold, consistency_threshold=cfg.consistency_threshold)
        caps = self.null_captions(risky)
        cal.captions = caps
        if wb is not None and cfg.whitebox_threshold is None:
            if caps:
                with tqdm(total=len(caps), desc="probe: calibrate (white-box)", unit="caption",
                          disable=not cfg.progress) as bar:
                    scores, ev = wb.scores(caps, self.r.wb_seeds(), cfg.whitebox_steps, cfg.diffusers.batch_size,
                                           progress=bar)
                cal.unet_evals += ev
                cal.whitebox_null = [float(s) for s in scores]
                cal.whitebox_threshold = calibrate_threshold(scores, cfg.whitebox_fpr)
            else:
                cal.note += "no non-risky captions to calibrate the white-box screen: every caption is flagged. "
        if wb is None and cfg.screen != "none" and cfg.consistency_threshold is None and caps:
            seeds = self.r.gen_seeds()[: cfg.screen_generations]
            gens = self.calibration_generations([(c, s) for c in caps for s in seeds], len(seeds), "consistency")
            cal.unet_evals += sum(g.unet_evals for g in gens)
            null = []
            for i in range(len(caps)):
                ims = [g.image for g in gens[i * len(seeds):(i + 1) * len(seeds)] if g.image is not None]
                d = pairwise_tiled_l2(ims, cfg.tile_grid, cfg.compare_max_side)
                null.extend(d[np.triu_indices(len(ims), 1)].tolist())
            cal.consistency_null = null
            if null:
                q = calibrate_threshold(null, cfg.consistency_fpr, higher_is_positive=False)
                cal.consistency_threshold = min(cfg.tiled_l2_threshold, q)
        cal.tiled_l2_threshold = cfg.tiled_l2_threshold
        cal.reference_null = []
        if cfg.reference_calibration_generations and caps:
            null, sig_null = self.reference_null(caps, cal)
            cal.reference_null = null
            cal.signal_null = sig_null
            if null:
                q = calibrate_threshold(null, cfg.reference_fpr, higher_is_positive=False)
                cal.tiled_l2_threshold = min(cfg.tiled_l2_threshold, q)
        emb = self.r.store.embedder.get("name") if self.r.store is not None else None
        thr, note = calibrate_fused(cal.signal_null, cfg, emb, self.r.copy is not None)
        cal.thresholds = thr.to_dict()
        cal.note += note
        if cal.consistency_threshold is None:
            cal.consistency_threshold = cal.tiled_l2_threshold
        else:
            cal.consistency_threshold = min(cal.consistency_threshold, cal.tiled_l2_threshold)
        self.r.budget.spent += cal.unet_evals
        write_json(path, cal.to_dict())
        return cal

    def reference_null(self, caps: list[str], cal: Calibration) -> tuple[list[float], list[dict]]:
        """Generations of non-risky captions against their own training image and their nearest images in the
        index: what 'not a copy' measures for this model (the chance level every copy threshold must stay
        beyond). Returns (smallest tiled L2 per generation, :func:`fusion.null_of` per generation)."""
        from .verdict import pair_signals

        t = self.r.table()
        if not len(t) or self.r.generator is None:
            return [], []
        first = t.drop_duplicates("caption").set_index("caption")
        refs = [(c, str(first.loc[c, "key"]), str(first.loc[c, "shard"])) for c in caps if c in first.index]
        if not refs:
            return [], []
        seeds = self.r.gen_seeds()[: self.cfg.reference_calibration_generations]
        own = {c: (k, sh) for c, k, sh in refs}
        loaded = {c: self.r.refs.load(*own[c]) for c in own}
        items = [(c, s) for c in own if loaded[c] is not None for s in seeds]
        gens = self.calibration_generations(items, len(seeds), "reference")
        cal.unet_evals += sum(g.unet_evals for g in gens)
        null, sig_null = [], []
        tools = self.r.tools
        with tqdm(total=len(items), desc="probe: calibrate (copy signals)", unit="generation",
                  disable=not self.cfg.progress) as bar:
            for (c, _s), g in zip(items, gens):
                bar.update(1)
                if g.image is None:
                    continue
                ref = [own[c]]
                emb = self.r.refs.embeddings(ref, [loaded[c]]) if tools.copy is not None else None
                (_ids, _ims, sigs), = pair_signals(tools, [g.image.convert("RGB")], ref, [loaded[c]], emb)
                if sigs:
                    null.append(float(min(x.tiled_l2 for x in sigs)))
                    sig_null.append(null_of(sigs))
        return null, sig_null

    def calibration_generations(self, items: list[tuple[str, int]], per_caption: int, what: str) -> list:
        """``generator.generate(items)`` (``per_caption`` seeds of each caption, in caption order) a few captions
        a call, with a bar of captions done and UNet evaluations spent: on CPU this is minutes of silence
        otherwise. An image depends only on (prompt, seed), not on the call it was made in."""
        step = per_caption * max(1, -(-self.cfg.diffusers.batch_size // max(1, per_caption)))
        gens: list = []
        with tqdm(total=len(items) // max(1, per_caption), desc=f"probe: calibrate ({what})", unit="caption",
                  disable=not self.cfg.progress) as bar:
            for i in range(0, len(items), step):
                gens += self.r.generator.generate(items[i:i + step])
                bar.set_postfix(unet_evals=sum(g.unet_evals for g in gens), refresh=False)
                bar.update(min(len(items), i + step) // max(1, per_caption) - bar.n)
        return gens

