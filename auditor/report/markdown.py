"""``summary.md``: the report's numbers as GitHub-flavoured markdown (fits ``$GITHUB_STEP_SUMMARY`` and a PR
comment). Everything from the run is escaped for markdown tables and for GitHub's inline HTML."""

from __future__ import annotations

import html
import re
from typing import Any, Optional

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")
# what a terminal, an editor or GitHub would act on instead of showing: C0 and C1 controls (ESC starts ANSI escape
# sequences; tab and newline are whitespace, collapsed below), DEL, lone surrogates, noncharacters, and the bidi
# embeddings, overrides, isolates and marks (U+202E shows text reversed)
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff"
                        "\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def strip_controls(text: str) -> str:
    r"""``text`` without control characters, bidi controls and lone surrogates.

    Example:
        >>> strip_controls("cat\x1b[31m red\u202egnp.exe")
        'cat[31m redgnp.exe'
    """
    return _INVISIBLE.sub("", text)


def clip(text: Any, n: int) -> str:
    if text is None or (isinstance(text, float) and text != text):
        return ""
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def pct(x: Optional[float]) -> str:
    return "\u2013" if x is None else f"{100.0 * float(x):.2f}%"


def md_cell(text: Any, n: int = 120) -> str:
    """Markdown-table-safe text: HTML escaped (GitHub renders inline HTML), markdown punctuation escaped,
    one line, at most ``n`` characters.

    Example:
        ```python
        md_cell("a|b\\nc")   # 'a\\\\|b c'
        ```
    """
    s = " ".join(strip_controls("" if text is None else str(text)).split())
    s = clip(s, n)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return html.escape(s, quote=False)


def render_markdown(summary: dict, report_name: Optional[str] = None, max_rows: int = 10) -> str:
    """The markdown summary. ``report_name`` is the report's file name (it is written beside summary.md); no
    local path is written."""
    lines = [f"## auditor report: {md_cell(summary.get('title') or summary['run'], 200)}", ""]
    st = summary["stages"]
    lines += ["| stage | status |", "|---|---|"] + [f"| {k} | {v} |" for k, v in st.items()] + [""]
    ix = summary.get("index")
    if ix:
        where = f" from {md_cell(ix['dataset_root'], 200)}" if ix.get("dataset_root") else ""
        lines.append(f"- **Index**: {ix.get('n_indexed', 0):,} images indexed in {ix.get('n_shards', 0)} shards"
                     f"{where}; {ix.get('n_errors', 0):,} bad samples; {ix.get('n_not_indexed', 0):,} rows not "
                     "downloaded.")
    dd = summary.get("dedup")
    if dd and "n_clusters" in dd:
        lines.append(f"- **Dedup**: duplicate rate {pct(dd.get('duplicate_rate'))}; "
                     f"{dd['n_duplicate_clusters']:,} duplicate clusters; largest cluster {dd['max_cluster_size']:,} "
                     f"({dd['max_cluster_size_excluding_placeholders']:,} excluding placeholders).")
    pr = summary.get("probe")
    if pr:
        model = f" of {md_cell(pr['model'], 200)}" if pr.get("model") else ""
        lines.append(f"- **Probe**{model}: {pr['n_captions']:,} prompts probed with {pr['n_generations']:,} "
                     f"generations; **{pr['n_extracted_captions']:,} extracted** ({pr['n_verbatim_captions']:,} "
                     f"verbatim, {pr['n_verbatim_copies']:,} verbatim copies); {pr['verdicts'].get('error', 0):,} "
                     "errors.")
    if summary.get("missing"):
        lines.append(f"- **Missing**: {md_cell(', '.join(summary['missing']), 400)}")
    if summary.get("problems"):
        lines.append(f"- **Unreadable**: {md_cell('; '.join(summary['problems']), 400)}")
    if pr and pr["extracted"]:
        lines += ["", "### Extracted prompts", "", "| verdict | duplicates | verbatim copies | caption |",
                  "|---|---:|---:|---|"]
        for e in pr["extracted"][:max_rows]:
            copies = f"{e.get('verbatim_count') or 0}/{e.get('n_generations') or 0}"
            lines.append(f"| {e['verdict']} | {e.get('cluster_size') or ''} | {copies} | {md_cell(e['caption'])} |")
        if len(pr["extracted"]) > max_rows:
            lines.append(f"\n{len(pr['extracted']) - max_rows} more in the report.")
    if report_name:
        lines += ["", f"Full report: {md_cell(report_name, 200)} (beside this file)."]
    return "\n".join(lines) + "\n"
