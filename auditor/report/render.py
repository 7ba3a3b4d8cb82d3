"""Render a run folder into one self-contained HTML report (plus ``summary.md`` and ``summary.json``).

Everything the report shows is inline: thumbnails and plots are base64 ``data:`` URIs, the CSS is in the page,
and there is no script at all (a Content-Security-Policy meta tag forbids scripts and any non-``data:`` image
as a second line of defence). All text from the run (captions, keys, errors, provenance) goes through
jinja2 with autoescape on. Generation PNGs are read only from inside ``RUN_DIR/probe``.

What a reader needs to judge a verdict by eye: every generation is shown at the display size of the training
image beside it (small images enlarged with nearest-neighbour, see :mod:`auditor.report.images`) with both
native sizes written under them; a table column that is empty for every row is left out; no local absolute
path is written into any output (:mod:`auditor.report.paths`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ..utils import write_json, write_text
from .collect import RunData, cluster_sizes, labels, load_run, probe_rows, scrubber, size_histogram, summarize
from .config import ReportConfig
from .images import ImageSlots, data_uri, fetch_training_images, safe_probe_file, thumbnail_uri  # noqa: F401
from ..text import clip as _clip
from ..text import md_cell, pct  # noqa: F401 - re-exported for older callers (they live in auditor/text.py)
from .markdown import render_markdown

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"

# the per-result statistics table: (column, header); a column the result has no value in is left out
RESULT_COLUMNS = [("cluster_size", "duplicates"), ("n_generations", "generations"), ("verbatim_count", "verbatim"),
                  ("template_count", "template"), ("max_copy_similarity", "max copy sim"),
                  ("min_tiled_l2", "min tiled L2"), ("largest_clique", "largest clique"),
                  ("whitebox_score", "white-box score"), ("best_key", "closest training image")]
RISK_COLUMNS = [("img", "image"), ("cluster_size", "cluster size"), ("caption_count", "caption repeats"),
                ("score", "score")]


def _v(x: Any) -> Any:
    """None for a missing value (None, NaN, NA, empty string), else ``x``."""
    if x is None:
        return None
    if isinstance(x, str):
        return x if x.strip() else None
    try:
        if pd.isna(x):
            return None
    except (TypeError, ValueError):
        pass
    return x


def visible(rows: list[dict], columns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The columns at least one row has a value in.

    Example:
        ```python
        visible([{"a": 1, "b": None}, {"a": None, "b": float("nan")}], [("a", "A"), ("b", "B")])  # [("a", "A")]
        ```
    """
    return [(k, h) for k, h in columns if any(_v(r.get(k)) is not None for r in rows)]


def _fmt(x: Any, digits: int = 3) -> str:
    """Numbers for people: thousands separators for counts, 3 significant digits for measurements."""
    import numpy as np

    x = _v(x)
    if x is None:
        return "\u2013"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.{digits}g}"
    return str(x)


def _caption_lookup(data: RunData) -> Optional[pd.Series]:
    t = data.index_table
    if t is None:
        return None
    return t.set_index(["shard", "key"])["caption"]


def _clusters(data: RunData, cfg: ReportConfig, sizes, images: ImageSlots) -> list[dict]:
    out: list[dict] = []
    if sizes is None or data.manifest is None:
        return out
    m = data.manifest
    clip = lambda s: _clip(s, cfg.max_caption_chars)  # noqa: E731
    top = sizes[sizes["size"] > 1].sort_values(["size", "cluster_id"], ascending=[False, True],
                                               kind="mergesort").head(cfg.top_clusters)
    caps = _caption_lookup(data)
    for _, c in top.iterrows():
        mem = m[m["cluster_id"] == c["cluster_id"]].copy()
        mem["_rep"] = ~mem["is_representative"].fillna(False).astype(bool)
        sort_cols, asc = ["_rep"], [True]
        if "similarity_to_representative" in mem:
            sort_cols.append("similarity_to_representative")
            asc.append(False)
        mem = mem.sort_values(sort_cols + ["shard", "key"], ascending=asc + [True, True], kind="mergesort")
        members = [{
            "img": images.training(r["shard"], r["key"]), "representative": bool(r["is_representative"]),
            "keep": bool(r["keep"]), "reason": _clip(r.get("reason"), 80),
            "similarity": _v(r.get("similarity_to_representative")),
        } for _, r in mem.head(cfg.members_per_cluster).iterrows()]
        captions, n_captions = [], None
        if caps is not None:
            cs = caps.reindex(list(zip(mem["shard"].astype(str), mem["key"].astype(str)))).dropna().astype(str)
            cs = cs[cs.str.strip() != ""]
            vc = cs.value_counts().sort_index(kind="mergesort").sort_values(ascending=False, kind="mergesort")
            captions = [{"text": clip(t), "count": int(n)} for t, n in vc.head(cfg.captions_per_cluster).items()]
            n_captions = int(len(vc))
        out.append({"cluster_id": c["cluster_id"], "size": int(c["size"]), "placeholder": bool(c["is_placeholder"]),
                    "members": members, "captions": captions, "n_captions": n_captions})
    return out


def _caption_table(data: RunData, cfg: ReportConfig) -> list[dict]:
    clip = lambda s: _clip(s, cfg.max_caption_chars)  # noqa: E731
    if data.captions is not None:  # dedup's table: also how many distinct image clusters carry each caption
        c = data.captions
        c = c[c["count"] > 1].sort_values(["count", "n_clusters", "caption"], ascending=[False, False, True],
                                          kind="mergesort")
        return [{"caption": clip(r["caption"]), "count": int(r["count"]), "clusters": int(r["n_clusters"])}
                for _, r in c.head(cfg.top_captions).iterrows()]
    if data.index_table is None:
        return []
    t = data.index_table
    t = t[t["caption_hash"].fillna("").astype(str) != ""]
    if not len(t):
        return []
    g = t.groupby("caption_hash", sort=True)
    agg = pd.DataFrame({"count": g.size(), "caption": g["caption"].first()}).reset_index()
    agg = agg[agg["count"] > 1].sort_values(["count", "caption_hash"], ascending=[False, True], kind="mergesort")
    return [{"caption": clip(r["caption"]), "count": int(r["count"]), "clusters": None}
            for _, r in agg.head(cfg.top_captions).iterrows()]


def _risk(data: RunData, cfg: ReportConfig, images: ImageSlots) -> list[dict]:
    out: list[dict] = []
    if data.risk is None:
        return out
    for _, r in data.risk.sort_values("rank", kind="mergesort").head(cfg.top_captions).iterrows():
        rep = None
        if _v(r.get("representative_key")) is not None and _v(r.get("representative_shard")) is not None:
            rep = images.training(r["representative_shard"], r["representative_key"])
        out.append({"rank": r["rank"], "caption": _clip(r["caption"], cfg.max_caption_chars),
                    "cluster_size": _v(r.get("cluster_size")), "caption_count": _v(r.get("caption_count")),
                    "n_captions": _v(r.get("n_captions")), "score": _v(r.get("score")),
                    "placeholder": bool(r.get("is_placeholder") or False), "img": rep})
    return out


def _results(data: RunData, cfg: ReportConfig, rows: pd.DataFrame, images: ImageSlots, scrub) -> list[dict]:
    clip = lambda s: _clip(s, cfg.max_caption_chars)  # noqa: E731
    key_shard: dict[str, str] = {}
    if data.index_table is not None:
        kt = data.index_table.drop_duplicates("key", keep="first")
        key_shard = dict(zip(kt["key"].astype(str), kt["shard"].astype(str)))
    gens = data.generations

    def train_img(key: Any, shard: Any) -> Optional[dict]:
        key, shard = _v(key), _v(shard)
        if key is None:
            return None
        key = str(key)
        sh = str(shard) if shard is not None else key_shard.get(key)
        if sh is None:
            return {"uri": None, "key": key, "shard": "?", "error": "key not in the index", "native": None,
                    "display": None, "upscaled": False}
        return images.training(sh, key)

    out = []
    for _, r in rows.head(cfg.max_probe_results).iterrows():
        pairs = []
        if gens is not None:
            g = gens[(gens["caption"] == r["caption"]) & (gens["variant"] == r["variant"])]
            if "tiled_l2" in g:
                g = g.sort_values(["tiled_l2"] + (["seed"] if "seed" in g else []), kind="mergesort",
                                  na_position="last")
            for _, gr in g.head(cfg.generations_per_result).iterrows():
                bk, bs = _v(gr.get("best_key")), _v(gr.get("best_shard"))
                if bs is None and bk is not None and str(bk) == str(r.get("best_key")):
                    bs = r.get("best_shard")
                src = str(_v(gr.get("reference_source")) or "")
                if src in ("prompt_file:url", "prompt_file:path") and bk is not None:  # not an indexed image
                    train = {"uri": None, "key": str(bk), "shard": "", "native": None, "display": None,
                             "upscaled": False, "error": "the prompts file's reference (shown in the evidence image)"}
                else:
                    train = train_img(bk, bs)
                pairs.append({"gen": images.generation(gr["path"]), "train": train,
                              "seed": _v(gr.get("seed")), "tiled_l2": _v(gr.get("tiled_l2")),
                              "copy_similarity": _v(gr.get("copy_similarity")), "verdict": _v(gr.get("verdict")),
                              # the fused verdict's evidence (probe/signals.py), shown beside the training image
                              "trimmed_l2": _v(gr.get("trimmed_l2")), "phash_distance": _v(gr.get("phash_distance")),
                              "layout_similarity": _v(gr.get("layout_similarity")),
                              "signals": ", ".join(str(x) for x in (gr.get("signals") if gr.get("signals") is not None
                                                                    else [])),
                              "reference_source": _v(gr.get("reference_source")),
                              "error": scrub.text(_clip(gr.get("error"), 200))})
        ev = r.get("evidence")
        if isinstance(ev, str):
            ev = [ev] if ev.strip() else []
        else:
            ev = [] if ev is None or (isinstance(ev, float) and pd.isna(ev)) else list(ev)
        prompt = r.get("prompt")
        item = {k: _v(r.get(k)) for k, _ in RESULT_COLUMNS}
        item.update({
            "caption": clip(r["caption"]), "variant": r["variant"], "verdict": r["verdict"],
            "prompt": clip(prompt) if isinstance(prompt, str) and prompt != r["caption"] else None,
            "reason": scrub.text(_clip(r.get("reason"), 300)), "whitebox_flag": _v(r.get("whitebox_flag")),
            "best_distance": _v(r.get("best_distance")), "error": scrub.text(_clip(r.get("error"), 500)),
            "pairs": pairs,
            "evidence": [images.generation(rel, evidence=True) for rel in ev[: cfg.generations_per_result]],
        })
        item["cols"] = visible([item], RESULT_COLUMNS)  # a measurement this result has not got is left out
        out.append(item)
    return out


def build_context(data: RunData, cfg: ReportConfig) -> dict:
    log.info("report: summary, tables and plots (%s)", ", ".join(
        k for k, v in (("index", data.index), ("dedup", data.manifest), ("probe", data.results)) if v is not None)
        or "no stage outputs")
    summary = summarize(data, cfg.max_caption_chars)
    scrub = scrubber(data)
    names = labels(data)
    images = ImageSlots(data.run_dir, data.index, cfg.thumbnail_px, cfg.thumbnail_quality, cfg.progress)
    ctx: dict[str, Any] = {"run": data.name, "title": names["title"], "names": names, "summary": summary,
                           "missing": sorted(data.missing), "problems": summary["problems"], "fmt": _fmt,
                           "pct": pct, "px": cfg.thumbnail_px}

    # ---- dataset
    ctx["index"] = summary.get("index")
    ctx["index_errors"], ctx["index_error_stages"], ctx["n_results_hidden"] = [], {}, 0
    if data.index is not None:
        err = data.index.errors()
        ctx["index_errors"] = [
            {"key": r["key"], "shard": r["shard"], "stage": r["stage"], "error": scrub.text(_clip(r["error"], 200))}
            for _, r in err.head(20).iterrows()
        ]
        ctx["index_error_stages"] = ({str(k): int(v) for k, v in err["stage"].value_counts().sort_index().items()}
                                     if len(err) else {})
    # ---- dedup
    ctx["dedup"] = summary.get("dedup")
    sizes = cluster_sizes(data)
    ctx["hist_png"] = None
    if sizes is not None and len(sizes):
        from .plots import cluster_histogram_png

        ctx["hist_png"] = data_uri(cluster_histogram_png(size_histogram(sizes["size"])), "image/png")
    ctx["clusters"] = _clusters(data, cfg, sizes, images)

    # ---- caption duplication and the risk ranking
    ctx["caption_table"] = _caption_table(data, cfg)
    ctx["caption_clusters_col"] = any(r["clusters"] is not None for r in ctx["caption_table"])
    ctx["risk"] = _risk(data, cfg, images)
    ctx["risk_cols"] = visible(ctx["risk"], RISK_COLUMNS)

    # ---- probe
    ctx["probe"] = summary.get("probe")
    ctx["results"], ctx["extraction_png"] = [], None
    rows = probe_rows(data)
    if rows is not None:
        if len(rows):
            from .plots import extraction_rate_png

            ctx["extraction_png"] = data_uri(extraction_rate_png(rows), "image/png")
        ctx["results"] = _results(data, cfg, rows, images, scrub)
        ctx["n_results_hidden"] = max(0, len(rows) - cfg.max_probe_results)

    # ---- provenance (local paths rewritten)
    prov = []
    if data.index is not None:
        prov.append(("index/index.json", dict(data.index.info)))
    if data.dedup_summary is not None:
        prov.append(("dedup/summary.json", data.dedup_summary))
    if data.provenance is not None:
        prov.append(("probe/provenance.json", data.provenance))
    ctx["provenance"] = [{"name": n, "text": _clip(json.dumps(scrub.obj(o), indent=2, sort_keys=True, default=str),
                                                   200_000)} for n, o in prov]

    images.load()
    for slot in list(images.train.values()) + list(images.files.values()):
        slot["error"] = scrub.text(slot["error"])
    return ctx


# ------------------------------------------------------------------------------------------------------------
# outputs


def _env() -> Environment:
    return Environment(loader=PackageLoader("auditor.report", "templates"),
                       autoescape=select_autoescape(enabled_extensions=("html",), default=True),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_html(ctx: dict) -> str:
    return _env().get_template("report.html").render(**ctx)


def default_out(run_dir: str | Path, cfg: ReportConfig) -> Path:
    from .collect import run_name

    return Path(cfg.out_dir) / run_name(run_dir) / REPORT_NAME


def build_report(run_dir: str | Path, cfg: Optional[ReportConfig] = None, out: Optional[str | Path] = None) -> Path:
    """Write ``report.html``, ``summary.md`` and ``summary.json`` (same folder); returns the HTML path.

    Example:
        ```python
        from auditor.report.render import build_report
        build_report("runs/laion")                         # -> reports/laion/report.html
        build_report("runs/laion", out="ci/report.html")   # summary.md / summary.json beside it
        ```
    """
    cfg = cfg or ReportConfig()
    log.info("report: reading %s", run_dir)
    data = load_run(run_dir)
    out = Path(out) if out is not None else default_out(run_dir, cfg)
    ctx = build_context(data, cfg)
    log.info("report: writing %s", out)
    write_text(out, render_html(ctx))
    write_json(out.parent / "summary.json", ctx["summary"])
    write_text(out.parent / "summary.md", render_markdown(ctx["summary"], report_name=out.name))
    log.info("report: wrote %s", out)
    return out
