"""The report's plots, drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch) and
returned as PNG bytes; the same input gives the same bytes (no software/date metadata).

Axes are labelled with what they count; count axes have integer ticks ("1, 10, 100", never "1.0, 10.0" or a
lone "100"), and a plot never puts two different quantities on one axis.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, NullLocator, PercentFormatter

from .collect import EXTRACTED_VERDICTS

# counts spread over more than this ratio get a log axis (bars of 1 and of 1,000 both visible)
LOG_RATIO = 20


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _count(v: float, _pos=None) -> str:
    return f"{int(round(v)):,}" if v >= 1 else ""


def log_count_ticks(hi: float) -> list[float]:
    """Ticks for a log count axis from 1 to ``hi``: 1, 2, 5, 10, 20, 50, ... thinned to at most 8.

    Example:
        ```python
        log_count_ticks(148)   # [1, 2, 5, 10, 20, 50, 100, 200]
        ```
    """
    hi = max(hi, 1)
    ticks: list[float] = []
    decade = 1
    while True:
        ticks += [decade, 2 * decade, 5 * decade]
        if 5 * decade >= hi:
            break
        decade *= 10
    top = next(t for t in ticks if t >= hi)
    ticks = [t for t in ticks if t <= top]
    if len(ticks) > 8:  # decades only, up to the first at or above hi
        ticks = [10 ** k for k in range(len(str(int(decade))) + 1)]
        ticks = ticks[: next(i for i, t in enumerate(ticks) if t >= hi) + 1]
    return ticks


def _count_axis(ax, counts: list[int], axis: str = "y") -> bool:
    """Log or linear integer axis for ``counts``; returns True when log."""
    pos = [c for c in counts if c > 0]
    a = ax.yaxis if axis == "y" else ax.xaxis
    if pos and max(pos) / min(pos) >= LOG_RATIO:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        hi = max(pos)
        ticks = log_count_ticks(hi)
        a.set_major_locator(FixedLocator(ticks))
        a.set_major_formatter(FuncFormatter(_count))
        a.set_minor_locator(NullLocator())
        a.set_minor_formatter(NullFormatter())
        (ax.set_ylim if axis == "y" else ax.set_xlim)(0.7, ticks[-1] * 1.25)
        return True
    a.set_major_locator(MaxNLocator(integer=True, nbins=6, min_n_ticks=3))
    a.set_major_formatter(FuncFormatter(lambda v, _: f"{int(round(v)):,}"))
    (ax.set_ylim if axis == "y" else ax.set_xlim)(0, max(pos or [1]) * 1.15)
    return False


def cluster_histogram_png(hist: list[dict]) -> bytes:
    """Bar chart of clusters per power-of-two size bin, each bar labelled with its count (log axis when the
    counts span more than 20x)."""
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    labels = [h["bin"] for h in hist]
    counts = [int(h["clusters"]) for h in hist]
    bars = ax.bar(range(len(hist)), counts, color="#4c72b0")
    ax.set_xticks(range(len(hist)), labels, rotation=45 if len(hist) > 8 else 0, fontsize=8)
    _count_axis(ax, counts)
    ax.bar_label(bars, labels=[f"{c:,}" if c else "" for c in counts], fontsize=8, padding=2)
    ax.set_xlabel("cluster size (images in the near-duplicate cluster)")
    ax.set_ylabel("number of clusters")
    ax.set_title("Cluster-size histogram")
    fig.tight_layout()
    return _png(fig)


def _dup_bins(x: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Power-of-two bins of duplicate counts: bin index per value and labels ("1", "2", "3-4", "5-8", ...)."""
    edges = [1, 2]
    while edges[-1] <= x.max():
        edges.append(edges[-1] * 2)
    lo = [1] + [e + 1 for e in edges[:-1]]
    hi = edges
    labels = [str(a) if a == b else f"{a}-{b}" for a, b in zip(lo, hi)]
    idx = np.searchsorted(np.asarray(hi), x, side="left")
    return idx, labels


def extraction_rate_png(results: pd.DataFrame) -> bytes:
    """Extraction against the training-set duplicate count of the probed caption's cluster, in two panels
    with one quantity each:

    - left, per probed prompt: the share of its generations judged copies (verbatim or template), against its
      cluster size; colour = the prompt's verdict.
    - right, per power-of-two duplicate-count bin: the share of the bin's prompts judged extracted (verbatim or
      template) and verbatim, with the number of prompts in the bin above each bar group.
    """
    fig = Figure(figsize=(10, 4.4))
    ax1 = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2)
    r = results[results["verdict"] != "error"]
    x = r["cluster_size"].fillna(1).astype(float).clip(lower=1).to_numpy()
    n = r["n_generations"].fillna(0).astype(float).to_numpy()
    hits = (r["verbatim_count"].fillna(0).astype(float) + r["template_count"].fillna(0).astype(float)).to_numpy()
    rate = np.where(n > 0, hits / np.maximum(n, 1), 0.0)
    verdict = r["verdict"].astype(str).to_numpy()
    if not len(x):
        for ax in (ax1, ax2):
            ax.text(0.5, 0.5, "no probe results", ha="center", va="center", transform=ax.transAxes)
    else:
        for v, color, label, size in (("none", "#8c8c8c", "not extracted", 22), ("template", "#f0ad4e", "template",
                                                                                     30),
                                      ("verbatim", "#c44e52", "verbatim", 30)):
            m = verdict == v
            if m.any():
                ax1.scatter(x[m], rate[m], s=size, alpha=0.8, color=color, label=f"{label} ({int(m.sum())})",
                            edgecolor="white", linewidth=0.5)
        ax1.set_xscale("log", base=2)
        ticks = [2 ** k for k in range(0, int(np.ceil(np.log2(x.max()))) + 1)]
        ax1.xaxis.set_major_locator(FixedLocator(ticks))
        ax1.xaxis.set_major_formatter(FuncFormatter(_count))
        ax1.xaxis.set_minor_locator(NullLocator())
        ax1.set_xlim(0.8, ticks[-1] * 1.25)
        ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False,
                   title="prompt verdict (prompts)", title_fontsize=8)

        idx, labels = _dup_bins(x)
        used = sorted(set(idx.tolist()))
        ext = np.isin(verdict, EXTRACTED_VERDICTS)
        verb = verdict == "verbatim"
        pos = np.arange(len(used))
        share_ext = [float(ext[idx == b].mean()) for b in used]
        share_verb = [float(verb[idx == b].mean()) for b in used]
        counts = [int((idx == b).sum()) for b in used]
        w = 0.38
        ax2.bar(pos - w / 2, share_ext, w, color="#f0ad4e", label="extracted (verbatim or template)")
        ax2.bar(pos + w / 2, share_verb, w, color="#c44e52", label="verbatim")
        for p, c, s in zip(pos, counts, share_ext):
            ax2.text(p, min(max(s, 0) + 0.03, 1.08), f"n={c}", ha="center", va="bottom", fontsize=8)
        ax2.set_xticks(pos, [labels[b] for b in used], fontsize=8)
        ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    ax1.set_ylim(-0.03, 1.05)
    ax1.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax1.set_xlabel("training-set duplicates of the prompt's image (cluster size)")
    ax1.set_ylabel("generations judged copies\n(share of the prompt's generations)")
    ax1.set_title("Per prompt", fontsize=10)
    ax2.set_ylim(0, 1.18)
    ax2.yaxis.set_major_locator(FixedLocator([0, 0.25, 0.5, 0.75, 1.0]))
    ax2.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax2.set_xlabel("training-set duplicates (cluster size bin)")
    ax2.set_ylabel("prompts extracted\n(share of the bin's prompts)")
    ax2.set_title("Per duplicate-count bin", fontsize=10)
    fig.suptitle("Extraction vs duplicate count", fontsize=11)
    fig.tight_layout()
    return _png(fig)
