"""The fused copy verdict of one generation: ``verbatim`` / ``template`` / ``none`` from the signals of
:mod:`auditor.probe.signals`, with thresholds calibrated on non-risky captions' generations.

Per (generation, training image) pair:

- **verbatim** when the tile rule tolerating outliers holds (``trimmed_l2 <= delta``: every fine cell but the
  worst ``outlier_share`` within delta, on the generation or the flip / rotation its pHash finds closest). Pixels
  decide verbatim alone: a pHash and a copy descriptor that agree (``phash_distance <= phash_verbatim`` and
  ``copy_similarity >= copy_verbatim``) also hold for a blurred composition with other details (measured:
  ``benchmarks/bench_probe_accuracy.py``, kind ``layout``), so that agreement is a strong *template* signal;
- **template** otherwise when one template signal holds: ``match_share >= template_share`` (much of the image
  is the training image's own pixels), ``layout_similarity >= layout``, ``phash_distance <= phash_template`` (the
  same low-frequency structure: the same layout with other details) or ``copy_similarity >= copy_template``;
- **none** otherwise.

A generation's verdict is its best pair's (verbatim before template, then the smallest ``trimmed_l2``).

Calibration (:func:`calibrate`): every threshold left unset (None) in the config is the ``reference_fpr / 4``
quantile (4 template signals, so a null generation is flagged at most at ``reference_fpr``), never looser than a
floor measured on unrelated photos, of the null: the most copy-like value of each signal over the references of
generations for non-risky captions (their own training image and the index's nearest images). ``delta`` and
``template_match_share`` are the configured bounds, tightened by the null; the copy descriptor's ``copy_similarity_threshold`` = null is
the embedder's own calibrated copy threshold (:func:`auditor.index.embedders.calibrated_cosine`), raised by the
null when that is higher.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Optional, Sequence

import numpy as np

from .detectors import calibrate_threshold
from .signals import PairSignals

log = logging.getLogger(__name__)

# Floors and fallbacks, measured on unrelated imagenet-256 photo pairs (benchmarks/bench_probe_accuracy.py; 100
# calibration + 50 held-out pairs): a null of ~64 generations sets a threshold at its extreme, and a held-out
# unrelated pair exceeded that extreme in 2 of 50 (copy 0.30, layout 0.71: two photos with the same horizon);
# with these floors 0 of 80 held-out pairs were flagged while every constructed template stayed flagged
# (layout stand-ins: layout >= 0.73; pastes: match share >= 0.44 where unrelated photos reach 0.19).
LAYOUT_FLOOR = 0.7            # a layout threshold is never below this 8x8 correlation
COPY_TEMPLATE_FLOOR = 0.35    # ... a loose copy-descriptor threshold never below this cosine
PHASH_TEMPLATE_CAP = 14       # ... nor a pHash template distance above this many bits of 64
FALLBACK_LAYOUT = 0.8         # when there is nothing to calibrate on (no index, no non-risky caption)
FALLBACK_PHASH_TEMPLATE = 12
FALLBACK_COPY_TEMPLATE = 0.4
UNCALIBRATED_COPY = 0.5       # an embedder without a calibrated copy threshold (open_clip, a user's ONNX model)


@dataclass
class Thresholds:
    """The fused verdict's thresholds (``calibration.json`` keeps them; field order = key order)."""

    delta: float = 0.15
    template_share: float = 0.3
    phash_verbatim: int = 4
    phash_template: int = FALLBACK_PHASH_TEMPLATE
    layout: float = FALLBACK_LAYOUT
    copy_verbatim: Optional[float] = None
    copy_template: Optional[float] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "Thresholds":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


def fired(s: PairSignals, t: Thresholds) -> tuple[str, list[str]]:
    """(verdict, the signals that decided it) of one pair.

    Example:
        >>> s = PairSignals(0.31, 0.9, 0.04, 0.95, 6, 0.97)
        >>> fired(s, Thresholds())
        ('verbatim', ['tiles'])
    """
    cs = s.copy_similarity if np.isfinite(s.copy_similarity) else None
    strong_copy = cs is not None and t.copy_verbatim is not None and cs >= t.copy_verbatim
    if s.trimmed_l2 <= t.delta:
        return "verbatim", ["tiles"]
    why = []
    if s.match_share >= t.template_share:
        why.append("tile_share")
    if s.layout_similarity >= t.layout:
        why.append("layout")
    if s.phash_distance <= t.phash_template:
        why.append("phash")
    if strong_copy:
        why.append("phash+copy" if s.phash_distance <= t.phash_verbatim else "copy")
    elif cs is not None and t.copy_template is not None and cs >= t.copy_template:
        why.append("copy_loose")
    if why:
        return "template", why
    return "none", []


RANK = {"verbatim": 0, "template": 1, "none": 2}


def best_pair(signals: Sequence[PairSignals], t: Thresholds) -> tuple[int, str, list[str]]:
    """(index of the strongest pair, its verdict, its signals); (-1, 'none', []) without pairs."""
    best = (-1, "none", [])
    key = (3, np.inf)
    for i, s in enumerate(signals):
        v, why = fired(s, t)
        k = (RANK[v], s.trimmed_l2)
        if k < key:
            key, best = k, (i, v, why)
    return best


def null_of(signals: Sequence[PairSignals]) -> dict:
    """The most copy-like value of each signal over one generation's references (one null sample)."""
    def pick(name, fn):
        vals = [getattr(s, name) for s in signals if np.isfinite(getattr(s, name))]
        return float(fn(vals)) if vals else None
    return {"trimmed_l2": pick("trimmed_l2", min), "match_share": pick("match_share", max),
            "phash_distance": pick("phash_distance", min), "layout_similarity": pick("layout_similarity", max),
            "copy_similarity": pick("copy_similarity", max)}


def calibrate(null: Sequence[dict], cfg, embedder: Optional[str], has_copy: bool) -> tuple[Thresholds, str]:
    """Thresholds from the null samples of :func:`null_of` at ``cfg.reference_fpr`` (see the module docstring);
    returns them and a note of what could not be calibrated."""
    # the template rule fires on any of 4 signals (tile share, layout, pHash, loose copy): each is calibrated at
    # a quarter of the target rate, so that a null generation is flagged at most at reference_fpr (union bound)
    fpr = cfg.reference_fpr / 4
    note = ""

    def col(name):
        return [d[name] for d in null if d.get(name) is not None and np.isfinite(d[name])]

    def q(name, higher):
        x = col(name)
        return calibrate_threshold(x, fpr, higher_is_positive=higher) if x else None

    t = Thresholds(delta=float(cfg.tiled_l2_threshold), template_share=float(cfg.template_match_share),
                   phash_verbatim=int(cfg.verbatim_phash_distance))
    if (d := q("trimmed_l2", False)) is not None:
        t.delta = min(t.delta, d - 1e-9)  # strictly below the null's quantile
    if (s := q("match_share", True)) is not None and s > t.template_share:
        t.template_share = s + 1e-9  # strictly above every null value at the quantile
    if cfg.layout_threshold is not None:
        t.layout = float(cfg.layout_threshold)
    elif (v := q("layout_similarity", True)) is not None:
        t.layout = max(LAYOUT_FLOOR, v + 1e-9)
    else:
        t.layout = FALLBACK_LAYOUT
    if cfg.template_phash_distance is not None:
        t.phash_template = int(cfg.template_phash_distance)
    elif (v := q("phash_distance", False)) is not None:
        t.phash_template = int(min(PHASH_TEMPLATE_CAP, v - 1))
    else:
        t.phash_template = FALLBACK_PHASH_TEMPLATE
    if not null:
        note = "no null generations: the fused verdict's fallback thresholds are used. "
    if has_copy:
        cv = q("copy_similarity", True)
        if cfg.copy_similarity_threshold is not None:
            t.copy_verbatim = float(cfg.copy_similarity_threshold)
        else:
            from ..index.embedders import calibrated_cosine

            base = calibrated_cosine(embedder) if embedder else None
            if base is None:
                base = UNCALIBRATED_COPY
                if cv is None:
                    log.warning("probe: embedder %r has no calibrated copy threshold and there is no null to "
                                "calibrate on; using %.2f", embedder, base)
            t.copy_verbatim = float(max(base, cv + 1e-9)) if cv is not None else float(base)
        if cfg.template_copy_similarity is not None:
            t.copy_template = float(cfg.template_copy_similarity)
        elif cv is not None:
            t.copy_template = float(min(t.copy_verbatim, max(COPY_TEMPLATE_FLOOR, cv + 1e-9)))
        else:
            t.copy_template = float(min(t.copy_verbatim, FALLBACK_COPY_TEMPLATE))
    return t, note
