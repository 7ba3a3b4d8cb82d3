"""The report's plots, drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch) and
returned as PNG bytes; the same input gives the same bytes (no software/date metadata)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, ScalarFormatter

from .collect import EXTRACTED_VERDICTS


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def cluster_histogram_png(hist: list[dict]) -> bytes:
    """Bar chart of clusters per power-of-two size bin (log count axis)."""
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    labels = [h["bin"] for h in hist]
    counts = [h["clusters"] for h in hist]
    ax.bar(range(len(hist)), counts, color="#4c72b0")
    ax.set_xticks(range(len(hist)), labels, rotation=45 if len(hist) > 8 else 0, fontsize=8)
    if counts and max(counts) > 0:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("cluster size (near-duplicate images)")
    ax.set_ylabel("clusters")
    ax.set_title("Cluster-size histogram")
    fig.tight_layout()
    return _png(fig)


def extraction_rate_png(results: pd.DataFrame) -> bytes:
    """Extraction rate against the training-set duplicate count of the probed caption's cluster.

    Points: one per probe result, the fraction of its generations judged copies (verbatim + template).
    Line: per power-of-two duplicate-count bin, the fraction of probed results with an extracted verdict,
    drawn at the geometric mean duplicate count of the bin's prompts.
    """
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    r = results[results["verdict"] != "error"]
    x = r["cluster_size"].fillna(1).astype(float).clip(lower=1).to_numpy()
    n = r["n_generations"].fillna(0).astype(float).to_numpy()
    hits = (r["verbatim_count"].fillna(0).astype(float) + r["template_count"].fillna(0).astype(float)).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(n > 0, hits / np.maximum(n, 1), 0.0)
    extracted = r["verdict"].isin(EXTRACTED_VERDICTS).to_numpy()
    if len(x):
        ax.scatter(x[~extracted], rate[~extracted], s=18, alpha=0.6, color="#8c8c8c", label="not extracted")
        ax.scatter(x[extracted], rate[extracted], s=24, alpha=0.8, color="#c44e52", label="extracted")
        bins = 2.0 ** np.arange(0, int(np.ceil(np.log2(x.max()))) + 2)
        idx = np.digitize(x, bins) - 1
        centers, frac = [], []
        for b in np.unique(idx):
            m = idx == b
            centers.append(float(np.exp(np.log(x[m]).mean())))  # where the bin's prompts are
            frac.append(float(extracted[m].mean()))
        ax.plot(centers, frac, "-o", color="#c44e52", lw=1.5, ms=4, label="share of prompts extracted")
        ax.legend(fontsize=8, loc="upper left")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=2, numticks=12))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.text(0.5, 0.5, "no probe results", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("training-set duplicates of the prompt's image (cluster size)")
    ax.set_ylabel("extraction rate")
    ax.set_title("Extraction rate vs duplicate count")
    fig.tight_layout()
    return _png(fig)
