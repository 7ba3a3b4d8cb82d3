"""Evidence images of a copy verdict: generation beside the training image it copies (or, with no training image,
a strip of the near-identical generations of the clique)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..utils import atomic_path, bounded_name
from .detectors import capped_size, center_crop_to_aspect


def safe_name(name: str) -> str:
    """``name`` as a file-name part: letters, digits, ``-`` and ``_`` kept, anything else ``_``; hashed when long
    (a 250-character key must not push an evidence file name past NAME_MAX)."""
    return bounded_name("".join(c if c.isalnum() or c in "-_" else "_" for c in name), 96)


def layout_strip(gen: Image.Image, ref: Image.Image, size: tuple[int, int], grid: int) -> Image.Image:
    """The two images' ``grid x grid`` grey box means (what the layout signal correlates), enlarged to ``size``
    with nearest-neighbour, side by side: the template evidence."""
    from .detectors import to_float
    from .signals import box_means

    w = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    panels = []
    for im in (gen, ref):
        m = box_means(to_float(im.resize(size, Image.BICUBIC)) @ w, grid)
        panels.append(Image.fromarray(np.clip(m * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
                      .resize(size, Image.NEAREST).convert("RGB"))
    strip = Image.new("RGB", (size[0] * 2 + 8, size[1]), (255, 255, 255))
    strip.paste(panels[0], (0, 0))
    strip.paste(panels[1], (size[0] + 8, 0))
    return strip


def write_evidence(run_dir: Path, folder: Path, cfg, variant: str, ok: list[dict], ims: list[Image.Image],
                   gen_rows: list[dict], clique: list[int]) -> list[str]:
    """PNG evidence under ``folder``: generation left, the training image it copies right (``gen_rows[i]
    ["_image"]``); for a template, a second row with both images' low-frequency layouts. Returns their paths
    relative to ``run_dir``."""
    out: list[str] = []
    by_seed = {g["seed"]: g for g in gen_rows}
    scored = [((by_seed[r["seed"]]["verdict"] != "verbatim", by_seed[r["seed"]]["tiled_l2"]
                if by_seed[r["seed"]]["tiled_l2"] is not None else np.inf), j) for j, r in enumerate(ok)
              if by_seed[r["seed"]]["verdict"] in ("verbatim", "template") and by_seed[r["seed"]]["best_key"]
              and by_seed[r["seed"]].get("_image") is not None]
    scored.sort()
    for _d, j in scored[: cfg.evidence_per_caption]:
        g = by_seed[ok[j]["seed"]]
        ref = g["_image"]
        if cfg.reference_crop == "center":
            ref = center_crop_to_aspect(ref, ims[j].size[0] / ims[j].size[1])
        size = capped_size(*ref.size, cfg.compare_max_side)
        template = g["verdict"] == "template"
        pair = Image.new("RGB", (size[0] * 2 + 8, size[1] * (2 if template else 1) + (8 if template else 0)),
                         (255, 255, 255))
        pair.paste(ims[j].resize(size, Image.BICUBIC), (0, 0))
        pair.paste(ref.resize(size, Image.BICUBIC), (size[0] + 8, 0))
        if template:
            pair.paste(layout_strip(ims[j], ref, size, cfg.layout_grid), (0, size[1] + 8))
        p = folder / f"{safe_name(variant)}_seed{ok[j]['seed']}_vs_{safe_name(g['best_key'])}.png"
        with atomic_path(p) as tmp:
            pair.save(tmp, format="PNG")
        out.append(p.relative_to(run_dir).as_posix())
    if not out and clique:
        idx = [next(j for j, r in enumerate(ok) if r["seed"] == s) for s in clique[:8]]
        w, h = capped_size(*ims[idx[0]].size, 256)
        grid = Image.new("RGB", ((w + 4) * len(idx) - 4, h), (255, 255, 255))
        for n, j in enumerate(idx):
            grid.paste(ims[j].resize((w, h), Image.BICUBIC), (n * (w + 4), 0))
        p = folder / f"{safe_name(variant)}_clique.png"
        with atomic_path(p) as tmp:
            grid.save(tmp, format="PNG")
        out.append(p.relative_to(run_dir).as_posix())
    return out
