"""``auditor gate RUN_DIR --policy POLICY.yaml [--junit PATH] [--markdown PATH]``: a release gate for CI.

Each policy key is one rule, evaluated on the run folder's dedup and probe outputs (see the shipped ``auditor/configs/policy.yaml``, ``--policy policy``):

* ``max_extracted_captions`` -- distinct prompts whose probe verdict is in ``extracted_verdicts`` (default
  verbatim and template; any prompt variant counts);
* ``max_verbatim_copies``    -- generations judged verbatim copies of a training image, summed over all prompts;
* ``max_duplicate_rate``     -- fraction of indexed samples the dedup manifest drops as duplicates;
* ``max_cluster_size``       -- the largest near-duplicate cluster (placeholder clusters left out unless
  ``cluster_size_ignores_placeholders: false``);
* ``required_probe_coverage`` -- the top-N clusters of ``dedup/risk.parquet`` must each have been probed (a
  probe result for the cluster or its prompt whose verdict is not ``error``).

A rule set to ``null`` is off (reported as skipped). Exit status: **0** every enabled rule passed; **1** at
least one rule failed; **2** the gate could not evaluate: the run folder or the policy is missing or invalid,
or no rule failed but some rule's input is missing/unreadable (a rule that cannot be evaluated never passes).

The gate fails closed: whatever the policy, a probe whose results are all errors (endpoint down, expired
token), or that covers none of the top risk clusters, is exit **2** (the built-in ``probe_evaluable`` check).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional
from xml.etree import ElementTree as ET

from pydantic import BaseModel, ConfigDict, Field

from .callmodule import make_module_callable
from .text import clean_text, md_cell

PASS, FAIL, ERROR, SKIP = "pass", "fail", "error", "skipped"
EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
FAIL_CLOSED_TOP = 20  # top risk clusters of which the probe must cover at least one when no coverage rule is set


class Policy(BaseModel):
    """The release policy. Every limit is inclusive (``actual <= limit`` passes); ``None`` turns a rule off."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_extracted_captions: Optional[int] = Field(0, ge=0)
    extracted_verdicts: list[Literal["verbatim", "template"]] = Field(default_factory=lambda: ["verbatim", "template"],
                                                                       min_length=1)
    max_verbatim_copies: Optional[int] = Field(0, ge=0)
    max_duplicate_rate: Optional[float] = Field(None, ge=0.0, le=1.0)
    max_cluster_size: Optional[int] = Field(None, ge=1)
    cluster_size_ignores_placeholders: bool = True
    required_probe_coverage: Optional[int] = Field(None, ge=0)

    RULES: ClassVar[tuple[str, ...]] = ("max_extracted_captions", "max_verbatim_copies", "max_duplicate_rate", "max_cluster_size",
             "required_probe_coverage")


def load_policy(path: str | Path) -> Policy:
    """The policy in a YAML file (or the shipped ``policy``); a mistake is a one-line ``ConfigError`` naming the
    key, e.g. ``max_cluster_sise: unknown key (did you mean max_cluster_size?)``."""
    from .config import read_yaml_mapping, validate_config

    data = read_yaml_mapping(path, what="policy")
    if set(data) == {"policy"} and isinstance(data["policy"], dict):  # allow a top-level `policy:` key
        data = data["policy"]
    return validate_config(data, Policy)


@dataclass
class RuleResult:
    rule: str
    status: str                 # pass | fail | error | skipped
    limit: Any = None
    actual: Any = None
    message: str = ""


# ------------------------------------------------------------------------------------------------------------
# text hygiene: captions and paths from the run go into terminals, XML and markdown

def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


# ------------------------------------------------------------------------------------------------------------
# evaluation


def evaluate(run_dir: str | Path, policy: Policy) -> list[RuleResult]:
    """The built-in ``probe_evaluable`` check, then one :class:`RuleResult` per rule in :attr:`Policy.RULES`
    order. Raises ``FileNotFoundError`` when the
    run folder does not exist."""
    from .report.collect import cluster_sizes, duplicate_rate, extracted_captions, load_run, probe_rows
    from .utils import caption_hash

    data = load_run(run_dir)

    def why_missing(*rels: str) -> str:
        bits = [p for p in data.problems if any(p.startswith(r) for r in rels)]
        bits += [f"{m} missing" for m in data.missing if any(m.startswith(r) for r in rels)]
        return "; ".join(bits) or f"{', '.join(rels)} not available"

    rows = probe_rows(data)
    sizes = cluster_sizes(data)
    rate = duplicate_rate(data)

    def rule(name: str, lim, missing: Optional[str], measure) -> RuleResult:
        """SKIP when the rule is off, ERROR when its inputs are missing, else ``measure(lim)``."""
        if lim is None:
            return RuleResult(name, SKIP, message="rule off")
        if missing is not None:
            return RuleResult(name, ERROR, lim, message=missing)
        return measure(lim)

    def extracted(lim) -> RuleResult:
        caps = extracted_captions(rows, tuple(policy.extracted_verdicts))
        msg = ""
        if len(caps) > lim:
            shown = "; ".join(repr(clean_text(c, 80)) for c in caps[:5])
            msg = f"{len(caps)} prompts reproduce training images ({'/'.join(policy.extracted_verdicts)}): {shown}"
            msg += " ..." if len(caps) > 5 else ""
        return RuleResult("max_extracted_captions", FAIL if len(caps) > lim else PASS, lim, len(caps), msg)

    def verbatim(lim) -> RuleResult:
        n = int(rows["verbatim_count"].fillna(0).astype(int).sum())
        msg = f"{n} generations are verbatim copies of training images" if n > lim else ""
        return RuleResult("max_verbatim_copies", FAIL if n > lim else PASS, lim, n, msg)

    def dup_rate(lim) -> RuleResult:
        msg = f"{rate:.2%} of samples are duplicates (limit {lim:.2%})" if rate > lim else ""
        return RuleResult("max_duplicate_rate", FAIL if rate > lim else PASS, lim, round(rate, 6), msg)

    def cluster_size(lim) -> RuleResult:
        s = sizes[~sizes["is_placeholder"]] if policy.cluster_size_ignores_placeholders else sizes
        biggest = int(s["size"].max()) if len(s) else 0
        msg = ""
        if biggest > lim:
            over = s[s["size"] > lim].sort_values(["size", "cluster_id"], ascending=[False, True])
            ids = ", ".join(f"{c} ({z})" for c, z in zip(over["cluster_id"].head(5), over["size"].head(5)))
            msg = f"{len(over)} clusters larger than {lim}: cluster (size) {ids}"
        return RuleResult("max_cluster_size", FAIL if biggest > lim else PASS, lim, biggest, msg)

    def covered_top(lim):
        """(top ``lim`` non-placeholder risk rows, one bool per row: probed successfully)."""
        risk = data.risk.sort_values("rank", kind="mergesort")
        if "is_placeholder" in risk:
            risk = risk[~risk["is_placeholder"].fillna(False).astype(bool)]
        top = risk.head(lim)
        ok = rows[rows["verdict"] != "error"]
        probed_ids = set(ok["cluster_id"].dropna().tolist()) if "cluster_id" in ok else set()
        # the probe prompts each distinct normalised caption once: a risk row whose caption normalises to a
        # probed prompt is covered by it
        probed_caps = set(caption_hash(c) for c in ok["caption"].dropna().astype(str) if c)
        covered = [(r["cluster_id"] in probed_ids) or (bool(r["caption"]) and caption_hash(str(r["caption"])) in probed_caps)
                   for _, r in top.iterrows()]
        return top, covered

    def coverage(lim) -> RuleResult:
        top, covered = covered_top(lim)
        n_cov = int(sum(covered))
        msg = ""
        if n_cov < len(top):
            missing = [int(r) for r, c in zip(top["rank"], covered) if not c]
            msg = (f"{len(top) - n_cov} of the top {len(top)} risky clusters were not probed (or their probe "
                   f"failed): ranks {', '.join(map(str, missing[:20]))}{' ...' if len(missing) > 20 else ''}")
        return RuleResult("required_probe_coverage", FAIL if n_cov < len(top) else PASS, lim, f"{n_cov}/{len(top)}", msg)

    no_probe = why_missing("probe/results") if rows is None else None
    no_dedup = why_missing("dedup/")
    cov_missing = None
    if data.risk is None or rows is None:
        cov_missing = why_missing(*(["dedup/risk"] if data.risk is None else []) + (["probe/results"] if rows is None else []))
    def probe_evaluable() -> RuleResult:
        """Fail closed (issue 19): a probe that ran but whose results are all errors, or that covers none of the
        top risk clusters, makes the whole gate "could not evaluate" (exit 2) whatever the policy."""
        name = "probe_evaluable"
        if rows is None:
            return RuleResult(name, SKIP, message="no probe results")
        n_err = int((rows["verdict"] == "error").sum()) if "verdict" in rows else len(rows)
        if len(rows) == 0 or n_err == len(rows):
            return RuleResult(name, ERROR, None, f"0/{len(rows)}",
                              f"every probe request failed ({n_err} of {len(rows)} results are errors)")
        if data.risk is not None and len(data.risk):
            top, covered = covered_top(policy.required_probe_coverage or FAIL_CLOSED_TOP)
            if len(top) and not any(covered):
                return RuleResult(name, ERROR, None, f"0/{len(top)}",
                                  f"the probe covers none of the top {len(top)} risky clusters")
        return RuleResult(name, PASS, None, f"{len(rows) - n_err}/{len(rows)}")

    return [
        probe_evaluable(),
        rule("max_extracted_captions", policy.max_extracted_captions, no_probe, extracted),
        rule("max_verbatim_copies", policy.max_verbatim_copies, no_probe, verbatim),
        rule("max_duplicate_rate", policy.max_duplicate_rate, no_dedup if rate is None else None, dup_rate),
        rule("max_cluster_size", policy.max_cluster_size, no_dedup if sizes is None else None, cluster_size),
        rule("required_probe_coverage", policy.required_probe_coverage, cov_missing, coverage),
    ]


def exit_code(results: list[RuleResult]) -> int:
    if any(r.rule == "probe_evaluable" and r.status == ERROR for r in results):
        return EXIT_ERROR  # fail closed: a probe that could not run is never a pass nor a plain fail
    st = {r.status for r in results}
    if FAIL in st:
        return EXIT_FAIL
    if ERROR in st:
        return EXIT_ERROR
    return EXIT_PASS


# ------------------------------------------------------------------------------------------------------------
# outputs


def table_text(results: list[RuleResult]) -> str:
    rows = [("rule", "limit", "actual", "result", "")] + [
        (r.rule, _fmt(r.limit), _fmt(r.actual), r.status.upper(), clean_text(r.message, 160)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + ("  " + row[4] if row[4] else "")
                     for row in rows).rstrip() + "\n"


def junit_xml(results: list[RuleResult], run_name: str, error: Optional[str] = None) -> bytes:
    """JUnit XML: one testcase per rule (failure / error / skipped children), or a single erroring testcase
    when the gate could not start (``error``)."""
    suite = ET.Element("testsuite", name="auditor gate", tests=str(len(results) or 1))
    counts = {FAIL: 0, ERROR: 0, SKIP: 0}
    cls = f"auditor.gate.{clean_text(run_name, 100)}"
    if error is not None:
        tc = ET.SubElement(suite, "testcase", classname=cls, name="evaluate")
        ET.SubElement(tc, "error", message=clean_text(error, 500), type="GateError").text = clean_text(error, 4000)
        counts[ERROR] += 1
    for r in results:
        tc = ET.SubElement(suite, "testcase", classname=cls, name=r.rule)
        msg = clean_text(r.message, 2000)
        detail = f"limit={_fmt(r.limit)} actual={_fmt(r.actual)}" + (f": {msg}" if msg else "")
        if r.status == FAIL:
            ET.SubElement(tc, "failure", message=msg or detail, type="PolicyViolation").text = detail
        elif r.status == ERROR:
            ET.SubElement(tc, "error", message=msg, type="NotEvaluated").text = detail
        elif r.status == SKIP:
            ET.SubElement(tc, "skipped", message=msg)
        if r.status in counts:
            counts[r.status] += 1
    suite.set("failures", str(counts[FAIL]))
    suite.set("errors", str(counts[ERROR]))
    suite.set("skipped", str(counts[SKIP]))
    root = ET.Element("testsuites", name="auditor")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def markdown(results: list[RuleResult], run_name: str, code: int) -> str:

    head = {EXIT_PASS: "passed", EXIT_FAIL: "FAILED", EXIT_ERROR: "could not evaluate"}[code]
    lines = [f"### auditor gate: {head} ({md_cell(run_name, 100)})", "", "| rule | limit | actual | result | detail |",
             "|---|---:|---:|---|---|"]
    for r in results:
        lines.append(f"| {r.rule} | {md_cell(_fmt(r.limit))} | {md_cell(_fmt(r.actual))} | {r.status} | "
                     f"{md_cell(clean_text(r.message, 300), 300)} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------
# CLI


def register(subparsers) -> None:
    from .cliutil import abs_path

    p = subparsers.add_parser(
        "gate", help="check a run against a release policy (exit 0 pass, 1 fail, 2 could not evaluate)",
        description=(__doc__.split("\n\n")[0] if __doc__ else "").replace("``", ""))
    p.add_argument("run_dir", metavar="RUN_DIR", type=abs_path, help="run folder holding dedup/ (and probe/)")
    p.add_argument("--policy", required=True, metavar="POLICY", type=_policy_arg,
                   help="release policy: a YAML file, or the shipped name 'policy' (auditor/configs/policy.yaml)")
    p.add_argument("--junit", metavar="PATH", type=abs_path, help="write JUnit XML (one testcase per rule)")
    p.add_argument("--markdown", metavar="PATH", type=abs_path,
                   help="write the result table as markdown (for $GITHUB_STEP_SUMMARY)")
    p.set_defaults(func=run)


def _policy_arg(value: str) -> str:
    """A shipped policy name (``policy``) becomes its file; anything else is a path, made absolute. A missing
    file is reported by :func:`run` (exit 2, with the JUnit/markdown files written), not by argparse."""
    from .cliutil import abs_path
    from .config import CONFIG_DIR

    if "/" not in value and "\\" not in value and not Path(value).exists():
        stem = value[:-5] if value.endswith(".yaml") else value
        if (CONFIG_DIR / f"{stem}.yaml").is_file():
            return str(CONFIG_DIR / f"{stem}.yaml")
    return abs_path(value)


def run(args: argparse.Namespace) -> int:
    from .report.collect import run_name
    from .utils import write_bytes, write_text

    name = run_name(args.run_dir)

    def give_up(msg: str) -> int:
        print(f"auditor: error: gate: {' '.join(str(msg).split())}", file=sys.stderr)
        if args.junit:
            write_bytes(args.junit, junit_xml([], name, error=msg))
        if args.markdown:
            write_text(args.markdown, f"### auditor gate: could not evaluate ({name})\n\n{clean_text(msg, 500)}\n")
        return EXIT_ERROR

    from .errors import ConfigError

    if not Path(args.policy).is_file():
        return give_up(f"policy file {args.policy} not found")
    try:
        policy = load_policy(args.policy)
    except ConfigError as exc:
        return give_up(f"bad policy {args.policy}: {str(exc).replace('bad configuration: ', '')}")
    except Exception as exc:
        return give_up(f"bad policy {args.policy}: {exc}")
    try:
        results = evaluate(args.run_dir, policy)
    except FileNotFoundError as exc:
        return give_up(str(exc))
    except Exception as exc:  # an unreadable run must give 2, never a traceback and exit 1
        return give_up(f"could not read {args.run_dir}: {type(exc).__name__}: {exc}")
    code = exit_code(results)
    print(table_text(results), end="")
    verdict = {EXIT_PASS: "PASSED", EXIT_FAIL: "FAILED", EXIT_ERROR: "COULD NOT EVALUATE"}[code]
    print(f"auditor gate: {verdict} ({name})")
    if args.junit:
        write_bytes(args.junit, junit_xml(results, name))
    if args.markdown:
        write_text(args.markdown, markdown(results, name, code))
    return code


# ------------------------------------------------------------------------------------------------------------
# the Python API: ``auditor.gate(run_dir, policy)`` (the module is callable) is :func:`check`


@dataclass
class GateVerdict:
    """What :func:`check` decided: ``code`` (0 pass, 1 a rule failed, 2 could not evaluate) and every rule."""

    code: int
    results: list

    @property
    def passed(self) -> bool:
        return self.code == 0

    def table(self) -> str:
        return table_text(self.results)


def check(run_dir: str | Path, policy: Any = "policy") -> GateVerdict:
    """Evaluate a release policy (a YAML path, a shipped name, or a :class:`Policy`) on a run.

    Example:
        >>> from auditor import gate
        >>> v = gate("runs/photos", "policy")    # doctest: +SKIP
        >>> v.passed, v.code                      # doctest: +SKIP
        (True, 0)
    """
    from .config import CONFIG_DIR

    if not isinstance(policy, Policy):
        p = Path(policy)
        if not p.exists() and (CONFIG_DIR / f"{p.name.removesuffix('.yaml')}.yaml").is_file():
            p = CONFIG_DIR / f"{p.name.removesuffix('.yaml')}.yaml"
        policy = load_policy(p)
    results = evaluate(run_dir, policy)
    return GateVerdict(exit_code(results), results)


make_module_callable(__name__, check, "gate")  # auditor.gate(run_dir, policy)
