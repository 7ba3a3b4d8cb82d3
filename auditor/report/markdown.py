"""``summary.md``: the report's numbers as GitHub-flavoured markdown (fits ``$GITHUB_STEP_SUMMARY`` and a PR
comment). Everything from the run is escaped for markdown tables and for GitHub's inline HTML."""

from __future__ import annotations

from typing import Optional

from ..text import clip, md_cell, pct, strip_controls  # noqa: F401 - shared with the gate (auditor/text.py)


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
