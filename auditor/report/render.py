"""Render a run folder into one self-contained HTML report (plus ``summary.md`` and ``summary.json``).

Everything the report shows is inline: thumbnails and plots are base64 ``data:`` URIs, the CSS is in the page,
and there is no script at all (a Content-Security-Policy meta tag forbids scripts and any non-``data:`` image
as a second line of defence). All text from the run (captions, keys, errors, provenance) goes through
jinja2 with autoescape on. Generation PNGs are read only from inside ``RUN_DIR/probe``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from tqdm.auto import tqdm

from ..utils import write_json, write_text
from .collect import (EXTRACTED_VERDICTS, RunData, cluster_sizes, load_run, probe_rows, size_histogram,
                      summarize)
from .config import ReportConfig

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
MAX_EVIDENCE_BYTES = 64 * 1024 * 1024
MAX_EVIDENCE_PIXELS = 89_478_485


# ------------------------------------------------------------------------------------------------------------
# images


def _data_uri(png_or_jpeg: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(png_or_jpeg).decode('ascii')}"


def _decode(data: bytes, max_pixels: int):
    """RGB PIL image through the index's own safe decoder (format whitelist, pixel limit checked from the
    header before decoding, the same orientation and alpha handling as what was hashed)."""
    from ..index.decode import decode_rgb

    return decode_rgb(data, max_pixels=max_pixels, max_bytes=MAX_EVIDENCE_BYTES)


def thumbnail_uri(img, px: int, quality: int) -> str:
    """A JPEG thumbnail (longest side ``px``) as a data URI; deterministic for the same pixels."""
    from PIL import Image

    im = img.convert("RGB")
    im.thumbnail((px, px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    return _data_uri(buf.getvalue(), "image/jpeg")


def fetch_training_images(store, wanted: Iterable[tuple[str, str]], progress: bool = True
                          ) -> dict[tuple[str, str], Any]:
    """Bytes of the training images ``(shard, key)``, read through the index's dataset reader.

    Readers without their own random access are read one shard at a time (each shard once, stopping when every
    wanted key of it was seen), not once per image. Values are ``bytes`` or the exception that prevented it.
    """
    from ..io.base import DatasetReader

    wanted = sorted(set(wanted))
    out: dict[tuple[str, str], Any] = {}
    if not wanted:
        return out
    try:
        reader = store.reader
    except Exception as exc:
        return {w: exc for w in wanted}
    by_shard: dict[str, set[str]] = defaultdict(set)
    for shard, key in wanted:
        by_shard[shard].add(key)

    if type(reader).get is not DatasetReader.get:  # the layout has random access: use it
        for shard, key in tqdm(wanted, desc="report: training images", disable=not progress):
            try:
                s = reader.get(shard, key)
                out[(shard, key)] = s.data if s.data is not None else KeyError(f"{key}: no image bytes")
            except Exception as exc:
                out[(shard, key)] = exc
        return out

    try:
        refs = {r.id: r for r in reader.shards()}
    except Exception as exc:
        return {w: exc for w in wanted}
    for shard in tqdm(sorted(by_shard), desc="report: reading shards", disable=not progress):
        keys = by_shard[shard]
        ref = refs.get(shard)
        if ref is None:
            for k in keys:
                out[(shard, k)] = KeyError(f"shard {shard!r} is not in the dataset any more")
            continue
        left = set(keys)
        try:
            for s in reader.read_shard(ref):
                if s.key in left:
                    out[(shard, s.key)] = s.data if s.data is not None else KeyError(f"{s.key}: no image bytes")
                    left.discard(s.key)
                    if not left:
                        break
        except Exception as exc:
            for k in left:
                out[(shard, k)] = exc
            left = set()
        for k in left:
            out[(shard, k)] = KeyError(f"{k!r} not found in shard {shard!r}")
    return out


def safe_probe_file(run_dir: Path, rel: str) -> Path:
    """Resolve a path stored in the probe tables (relative to RUN_DIR, as the probe writes them; a path relative
    to RUN_DIR/probe is accepted too). It must stay inside RUN_DIR/probe: a hostile run folder must not make
    the report inline arbitrary local files."""
    base = (Path(run_dir) / "probe").resolve()
    rel = str(rel)
    if not rel:
        raise FileNotFoundError("no image (the generation failed)")
    candidates = [(Path(run_dir) / rel).resolve(), (base / rel).resolve()]
    inside = [p for p in candidates if p.is_relative_to(base)]
    if not inside:
        raise ValueError(f"path {rel!r} leaves the probe folder")
    p = next((c for c in inside if c.is_file()), None)
    if p is None:
        raise FileNotFoundError(f"{rel} does not exist")
    if p.stat().st_size > MAX_EVIDENCE_BYTES:
        raise ValueError(f"{rel} is larger than {MAX_EVIDENCE_BYTES} bytes")
    return p


# ------------------------------------------------------------------------------------------------------------
# context


def _clip(text: Any, n: int) -> str:
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return ""
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _fmt(x: Any, digits: int = 3) -> str:
    """Numbers for people: thousands separators for counts, 3 significant digits for measurements."""
    import numpy as np

    if x is None:
        return "\u2013"
    try:
        if pd.isna(x):
            return "\u2013"
    except (TypeError, ValueError):
        pass
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.{digits}g}"
    return str(x)


def _pct(x: Optional[float]) -> str:
    return "\u2013" if x is None else f"{100.0 * float(x):.2f}%"


class _Images:
    """Collects the images the report needs, then loads them in one pass."""

    def __init__(self, data: RunData, cfg: ReportConfig):
        self.data, self.cfg = data, cfg
        self.train: dict[tuple[str, str], dict] = {}
        self.files: dict[str, dict] = {}

    def training(self, shard: Any, key: Any) -> dict:
        k = (str(shard), str(key))
        return self.train.setdefault(k, {"uri": None, "error": None, "key": k[1], "shard": k[0]})

    def generation(self, rel: Any, scale: int = 1) -> dict:
        rel = "" if rel is None or (isinstance(rel, float) and pd.isna(rel)) else str(rel)
        return self.files.setdefault(f"{scale}:{rel}", {"uri": None, "error": None, "path": rel, "scale": scale})

    def load(self) -> None:
        px, q = self.cfg.thumbnail_px, self.cfg.thumbnail_quality
        store = self.data.index
        if self.train:
            if store is None:
                for slot in self.train.values():
                    slot["error"] = "no index in this run"
            else:
                max_pixels = int(((store.info.get("config") or {}).get("decode") or {}).get("max_pixels")
                                 or MAX_EVIDENCE_PIXELS)
                got = fetch_training_images(store, self.train.keys(), self.cfg.progress)
                for k, slot in self.train.items():
                    v = got.get(k)
                    if isinstance(v, (bytes, bytearray)):
                        try:
                            slot["uri"] = thumbnail_uri(_decode(bytes(v), max_pixels), px, q)
                        except Exception as exc:
                            slot["error"] = f"undecodable: {type(exc).__name__}: {exc}"
                    else:
                        slot["error"] = f"unavailable: {v}"
        for _, slot in tqdm(sorted(self.files.items()), desc="report: generations", disable=not self.cfg.progress):
            try:
                p = safe_probe_file(self.data.run_dir, slot["path"])
                slot["uri"] = thumbnail_uri(_decode(p.read_bytes(), MAX_EVIDENCE_PIXELS), px * slot["scale"], q)
            except Exception as exc:
                slot["error"] = f"{type(exc).__name__}: {exc}"


def _caption_lookup(data: RunData) -> Optional[pd.DataFrame]:
    t = data.index_table
    if t is None:
        return None
    return t.set_index(["shard", "key"])["caption"]


def build_context(data: RunData, cfg: ReportConfig) -> dict:
    summary = summarize(data, cfg.max_caption_chars)
    images = _Images(data, cfg)
    clip = lambda s: _clip(s, cfg.max_caption_chars)  # noqa: E731
    ctx: dict[str, Any] = {"run": data.name, "summary": summary, "missing": sorted(data.missing),
                           "problems": list(data.problems), "fmt": _fmt, "pct": _pct}

    # ---- dataset
    idx = summary.get("index")
    ctx["index"] = idx
    ctx["index_errors"], ctx["index_error_stages"], ctx["n_results_hidden"] = [], {}, 0
    if data.index is not None:
        err = data.index.errors()
        ctx["index_errors"] = [
            {"key": r["key"], "shard": r["shard"], "stage": r["stage"], "error": _clip(r["error"], 200)}
            for _, r in err.head(20).iterrows()
        ]
        ctx["index_error_stages"] = {str(k): int(v) for k, v in err["stage"].value_counts().sort_index().items()} if len(err) else {}
    # ---- dedup
    ctx["dedup"] = summary.get("dedup")
    sizes = cluster_sizes(data)
    ctx["hist_png"] = None
    if sizes is not None and len(sizes):
        from .plots import cluster_histogram_png

        ctx["hist_png"] = _data_uri(cluster_histogram_png(size_histogram(sizes["size"])), "image/png")

    ctx["clusters"] = []
    if sizes is not None and data.manifest is not None:
        m = data.manifest
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
            members = []
            for _, r in mem.head(cfg.members_per_cluster).iterrows():
                members.append({
                    "img": images.training(r["shard"], r["key"]),
                    "representative": bool(r["is_representative"]),
                    "keep": bool(r["keep"]),
                    "reason": _clip(r.get("reason"), 80),
                    "similarity": r.get("similarity_to_representative"),
                })
            captions = []
            if caps is not None:
                idx_pairs = list(zip(mem["shard"].astype(str), mem["key"].astype(str)))
                cs = caps.reindex(idx_pairs).dropna().astype(str)
                cs = cs[cs.str.strip() != ""]
                vc = cs.value_counts()
                vc = vc.sort_index(kind="mergesort").sort_values(ascending=False, kind="mergesort")
                captions = [{"text": clip(t), "count": int(n)} for t, n in vc.head(cfg.captions_per_cluster).items()]
                n_captions = int(len(vc))
            else:
                n_captions = None
            ctx["clusters"].append({
                "cluster_id": c["cluster_id"], "size": int(c["size"]), "placeholder": bool(c["is_placeholder"]),
                "members": members, "captions": captions, "n_captions": n_captions,
            })

    # ---- caption duplication
    ctx["caption_table"] = []
    if data.captions is not None:  # dedup's table: also how many distinct image clusters carry each caption
        c = data.captions
        c = c[c["count"] > 1].sort_values(["count", "n_clusters", "caption"], ascending=[False, False, True],
                                          kind="mergesort")
        ctx["caption_table"] = [
            {"caption": clip(r["caption"]), "count": int(r["count"]), "clusters": int(r["n_clusters"])}
            for _, r in c.head(cfg.top_captions).iterrows()
        ]
    elif data.index_table is not None:
        t = data.index_table
        t = t[t["caption_hash"].fillna("").astype(str) != ""]
        if len(t):
            g = t.groupby("caption_hash", sort=True)
            agg = pd.DataFrame({"count": g.size(), "caption": g["caption"].first()}).reset_index()
            agg = agg[agg["count"] > 1].sort_values(["count", "caption_hash"], ascending=[False, True], kind="mergesort")
            ctx["caption_table"] = [
                {"caption": clip(r["caption"]), "count": int(r["count"]), "clusters": None}
                for _, r in agg.head(cfg.top_captions).iterrows()
            ]
    ctx["risk"] = []
    if data.risk is not None:
        rk = data.risk.sort_values("rank", kind="mergesort").head(cfg.top_captions)
        for _, r in rk.iterrows():
            rep = None
            if pd.notna(r.get("representative_key")) and pd.notna(r.get("representative_shard")):
                rep = images.training(r["representative_shard"], r["representative_key"])
            ctx["risk"].append({
                "rank": r["rank"], "caption": clip(r["caption"]), "cluster_size": r.get("cluster_size"),
                "caption_count": r.get("caption_count"), "n_captions": r.get("n_captions"),
                "score": r.get("score"), "placeholder": bool(r.get("is_placeholder") or False), "img": rep,
            })

    # ---- probe
    ctx["probe"] = summary.get("probe")
    ctx["results"] = []
    ctx["extraction_png"] = None
    rows = probe_rows(data)
    if rows is not None:
        if len(rows):
            from .plots import extraction_rate_png

            ctx["extraction_png"] = _data_uri(extraction_rate_png(rows), "image/png")
        key_shard: dict[str, str] = {}
        if data.index_table is not None:
            kt = data.index_table.drop_duplicates("key", keep="first")
            key_shard = dict(zip(kt["key"].astype(str), kt["shard"].astype(str)))
        gens = data.generations
        def train_img(key: Any, shard: Any) -> Optional[dict]:
            if key is None or (isinstance(key, float) and pd.isna(key)) or str(key) == "":
                return None
            key = str(key)
            sh = str(shard) if shard is not None and not (isinstance(shard, float) and pd.isna(shard)) and str(shard) \
                else key_shard.get(key)
            if sh is None:
                return {"uri": None, "key": key, "shard": "?", "error": "key not in the index"}
            return images.training(sh, key)

        for _, r in rows.head(cfg.max_probe_results).iterrows():
            pairs = []
            if gens is not None:
                g = gens[(gens["caption"] == r["caption"]) & (gens["variant"] == r["variant"])]
                if "tiled_l2" in g:
                    g = g.sort_values(["tiled_l2"] + (["seed"] if "seed" in g else []), kind="mergesort",
                                      na_position="last")
                for _, gr in g.head(cfg.generations_per_result).iterrows():
                    bk = gr.get("best_key")
                    bs = gr.get("best_shard")
                    if bs is None and bk is not None and str(bk) == str(r.get("best_key")):
                        bs = r.get("best_shard")
                    pairs.append({"gen": images.generation(gr["path"]), "train": train_img(bk, bs),
                                  "seed": gr.get("seed"), "tiled_l2": gr.get("tiled_l2"),
                                  "copy_similarity": gr.get("copy_similarity"), "verdict": gr.get("verdict"),
                                  "error": _clip(gr.get("error"), 200)})
            ev = r.get("evidence")
            ev = [] if ev is None or (isinstance(ev, float) and pd.isna(ev)) else ([ev] if isinstance(ev, str) else list(ev))
            evidence = [images.generation(rel, scale=2) for rel in ev[: cfg.generations_per_result]]
            prompt = r.get("prompt")
            ctx["results"].append({
                "caption": clip(r["caption"]), "variant": r["variant"], "verdict": r["verdict"],
                "prompt": clip(prompt) if isinstance(prompt, str) and prompt != r["caption"] else None,
                "reason": _clip(r.get("reason"), 300),
                "cluster_size": r.get("cluster_size"), "n_generations": r.get("n_generations"),
                "verbatim_count": r.get("verbatim_count"), "template_count": r.get("template_count"),
                "whitebox_score": r.get("whitebox_score"), "whitebox_flag": r.get("whitebox_flag"),
                "max_copy_similarity": r.get("max_copy_similarity"), "min_tiled_l2": r.get("min_tiled_l2"),
                "largest_clique": r.get("largest_clique"), "best_key": r.get("best_key"),
                "best_distance": r.get("best_distance"), "error": _clip(r.get("error"), 500),
                "pairs": pairs, "evidence": evidence,
            })
        ctx["n_results_hidden"] = max(0, len(rows) - cfg.max_probe_results)

    # ---- provenance
    prov = []
    if data.index is not None:
        info = dict(data.index.info)
        prov.append(("index/index.json", json.dumps(info, indent=2, sort_keys=True, default=str)))
    if data.dedup_summary is not None:
        prov.append(("dedup/summary.json", json.dumps(data.dedup_summary, indent=2, sort_keys=True, default=str)))
    if data.provenance is not None:
        prov.append(("probe/provenance.json", json.dumps(data.provenance, indent=2, sort_keys=True, default=str)))
    ctx["provenance"] = [{"name": n, "text": _clip(t, 200_000)} for n, t in prov]

    images.load()
    return ctx


# ------------------------------------------------------------------------------------------------------------
# outputs


def _env() -> Environment:
    env = Environment(loader=PackageLoader("auditor.report", "templates"),
                      autoescape=select_autoescape(enabled_extensions=("html",), default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env


def render_html(ctx: dict) -> str:
    return _env().get_template("report.html").render(**ctx)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def md_cell(text: Any, n: int = 120) -> str:
    """Markdown-table-safe text: HTML escaped (GitHub renders inline HTML), markdown punctuation escaped,
    one line, at most ``n`` characters."""
    s = _clip("" if text is None else str(text), n)
    s = " ".join(s.split())
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return html.escape(s, quote=False)


def render_markdown(summary: dict, report_path: Optional[str] = None, max_rows: int = 10) -> str:
    lines = [f"## auditor report: {md_cell(summary['run'], 200)}", ""]
    st = summary["stages"]
    lines += ["| stage | status |", "|---|---|"] + [f"| {k} | {v} |" for k, v in st.items()] + [""]
    ix = summary.get("index")
    if ix:
        lines.append(f"- **Index**: {ix.get('n_indexed', 0):,} images indexed in {ix.get('n_shards', 0)} shards; "
                     f"{ix.get('n_errors', 0):,} bad samples; {ix.get('n_not_indexed', 0):,} rows not downloaded.")
    dd = summary.get("dedup")
    if dd and "n_clusters" in dd:
        lines.append(f"- **Dedup**: duplicate rate {_pct(dd.get('duplicate_rate'))}; "
                     f"{dd['n_duplicate_clusters']:,} duplicate clusters; largest cluster {dd['max_cluster_size']:,} "
                     f"({dd['max_cluster_size_excluding_placeholders']:,} excluding placeholders).")
    pr = summary.get("probe")
    if pr:
        lines.append(f"- **Probe**: {pr['n_captions']:,} prompts probed with {pr['n_generations']:,} generations; "
                     f"**{pr['n_extracted_captions']:,} extracted** ({pr['n_verbatim_captions']:,} verbatim, "
                     f"{pr['n_verbatim_copies']:,} verbatim copies); {pr['verdicts'].get('error', 0):,} errors.")
    if summary.get("missing"):
        lines.append(f"- **Missing**: {md_cell(', '.join(summary['missing']), 400)}")
    if summary.get("problems"):
        lines.append(f"- **Unreadable**: {md_cell('; '.join(summary['problems']), 400)}")
    if pr and pr["extracted"]:
        lines += ["", "### Extracted prompts", "", "| verdict | duplicates | copies | caption |", "|---|---:|---:|---|"]
        for e in pr["extracted"][:max_rows]:
            copies = f"{e.get('verbatim_count') or 0}/{e.get('n_generations') or 0}"
            lines.append(f"| {e['verdict']} | {e.get('cluster_size') or ''} | {copies} | {md_cell(e['caption'])} |")
        if len(pr["extracted"]) > max_rows:
            lines.append(f"\n{len(pr['extracted']) - max_rows} more in the report.")
    if report_path:
        lines += ["", f"Full report: `{' '.join(str(report_path).replace('`', '').split())}`"]
    return "\n".join(lines) + "\n"


def default_out(run_dir: str | Path, cfg: ReportConfig) -> Path:
    from .collect import run_name

    return Path(cfg.out_dir) / run_name(run_dir) / REPORT_NAME


def build_report(run_dir: str | Path, cfg: Optional[ReportConfig] = None, out: Optional[str | Path] = None) -> Path:
    """Write ``report.html``, ``summary.md`` and ``summary.json`` (same folder); returns the HTML path."""
    cfg = cfg or ReportConfig()
    data = load_run(run_dir)
    out = Path(out) if out is not None else default_out(run_dir, cfg)
    ctx = build_context(data, cfg)
    write_text(out, render_html(ctx))
    write_json(out.parent / "summary.json", ctx["summary"])
    write_text(out.parent / "summary.md", render_markdown(ctx["summary"], report_path=str(out)))
    log.info("report: wrote %s", out)
    return out
