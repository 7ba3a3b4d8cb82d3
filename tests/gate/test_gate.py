"""``auditor gate``: exit codes (0 pass / 1 fail / 2 could not evaluate), JUnit XML, policy validation.

The run folder is real: Kodak photos plus JPEG re-encodes (two duplicate clusters) indexed with
``run_index`` and deduplicated with ``run_dedup``; probe results are written in their documented layout.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import pandas as pd
import pytest
from PIL import Image

from auditor.cli import main
from auditor.gate import Policy, evaluate, exit_code, load_policy
from auditor.utils import write_parquet

REPO = Path(__file__).resolve().parents[2]
RULES = list(Policy.RULES)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, kodak) -> Path:
    from auditor.config import load_config
    from auditor.dedup.runner import run_dedup
    from auditor.index.runner import run_index

    tmp = tmp_path_factory.mktemp("gate")
    ds = tmp / "dataset"
    ds.mkdir()
    for p in kodak[:6]:
        shutil.copy(p, ds / p.name)
        (ds / (p.stem + ".txt")).write_text(f"photo {p.stem}", encoding="utf-8")
    # cluster A: kodak01 + 2 re-encodes, one caption; cluster B: kodak03 + 1 re-encode
    for src, n, cap in ((kodak[0], 2, "a red barn at dawn"), (kodak[2], 1, "a hat on a table")):
        im = Image.open(src).convert("RGB")
        (ds / (src.stem + ".txt")).write_text(cap, encoding="utf-8")
        for i in range(n):
            im.save(ds / f"{src.stem}_copy{i}.jpg", format="JPEG", quality=75 + 10 * i)
            (ds / f"{src.stem}_copy{i}.txt").write_text(cap, encoding="utf-8")
    run = tmp / "run"
    cfg = load_config(overrides=["index.workers=0", "index.progress=false", "dedup.progress=false"])
    run_index(str(ds.resolve()), run, cfg)
    run_dedup(run, cfg)
    risk = pd.read_parquet(run / "dedup" / "risk.parquet")
    assert list(risk["cluster_size"][:2]) == [3, 2]
    return run


def with_probe(base: Path, tmp: Path, verdicts: list[str], captions=None) -> Path:
    """A copy of the base run with probe results for the top risky clusters (one per verdict)."""
    run = tmp / "run"
    shutil.copytree(base, run)
    risk = pd.read_parquet(run / "dedup" / "risk.parquet").sort_values("rank")
    rows = []
    for i, v in enumerate(verdicts):
        r = risk.iloc[i]
        cap = captions[i] if captions else r["caption"]
        rows.append({"caption": cap, "variant": "original", "cluster_id": int(r["cluster_id"]),
                     "cluster_size": int(r["cluster_size"]), "seeds": [0, 1, 2, 3], "n_generations": 4,
                     "unet_evals": 200, "whitebox_score": 1.0, "whitebox_flag": False, "max_copy_similarity": 0.5,
                     "min_tiled_l2": 0.3, "largest_clique": 1,
                     "verbatim_count": 3 if v == "verbatim" else 0, "template_count": 2 if v == "template" else 0,
                     "verdict": v, "best_key": r["representative_key"], "best_shard": r["representative_shard"],
                     "best_distance": 0.3, "evidence": [], "error": "boom" if v == "error" else None})
    write_parquet(run / "probe" / "results.parquet", pd.DataFrame(rows))
    return run


def write_policy(path: Path, **kw) -> Path:
    import yaml

    base = {"max_extracted_captions": 0, "max_verbatim_copies": 0, "max_duplicate_rate": 0.5,
            "max_cluster_size": 10, "required_probe_coverage": 2}
    base.update(kw)
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    return path


def junit(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()  # must be well-formed XML
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    return {c.get("name"): c for c in cases}


def test_shipped_policy_is_valid():
    p = load_policy(REPO / "configs" / "policy.yaml")
    assert p.max_extracted_captions == 0 and p.required_probe_coverage == 20


def test_pass(base_run, tmp_path, capsys):
    run = with_probe(base_run, tmp_path, ["none", "none"])
    pol = write_policy(tmp_path / "p.yaml")
    xml = tmp_path / "junit.xml"
    md = tmp_path / "gate.md"
    code = main(["gate", str(run), "--policy", str(pol), "--junit", str(xml), "--markdown", str(md)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASSED" in out
    for rule in RULES:
        assert rule in out
    cases = junit(xml)
    assert sorted(cases) == sorted(RULES + ["probe_evaluable"])
    assert all(len(list(c)) == 0 for c in cases.values())  # no failure/error/skipped children
    suite = ET.parse(xml).getroot().find("testsuite")
    assert suite.get("tests") == "6" and suite.get("failures") == "0" and suite.get("errors") == "0"
    assert "passed" in md.read_text()


def test_fail(base_run, tmp_path, capsys):
    hostile = "\x1b[31mred\x1b[0m <script>\x00 caption"
    run = with_probe(base_run, tmp_path, ["verbatim", "template"], captions=[hostile, "a hat on a table"])
    pol = write_policy(tmp_path / "p.yaml", max_cluster_size=2, max_duplicate_rate=0.1)
    xml = tmp_path / "junit.xml"
    code = main(["gate", str(run), "--policy", str(pol), "--junit", str(xml)])
    out = capsys.readouterr().out
    assert code == 1
    assert "\x1b" not in out and "\x00" not in out  # terminal-safe
    cases = junit(xml)
    assert sorted(cases) == sorted(RULES + ["probe_evaluable"])
    failed = {n for n, c in cases.items() if c.find("failure") is not None}
    # 2 extracted prompts, 3 verbatim copies, 3/9 dropped, largest cluster 3 > 2; coverage by cluster id
    assert failed == {"max_extracted_captions", "max_verbatim_copies", "max_duplicate_rate", "max_cluster_size"}
    msg = cases["max_extracted_captions"].find("failure").get("message")
    assert "2 prompts" in msg and "<script>" in msg and "red" in msg and "\x1b" not in msg
    assert cases["required_probe_coverage"].find("failure") is None
    res = {r.rule: r for r in evaluate(run, load_policy(pol))}
    assert res["max_verbatim_copies"].actual == 3
    assert res["max_cluster_size"].actual == 3
    assert res["max_duplicate_rate"].actual == pytest.approx(3 / 9)
    # only verbatim counts when the policy says so
    res = {r.rule: r for r in evaluate(run, Policy(extracted_verdicts=["verbatim"], max_extracted_captions=1))}
    assert res["max_extracted_captions"].status == "pass" and res["max_extracted_captions"].actual == 1


def test_coverage_counts_only_successful_probes(base_run, tmp_path):
    run = with_probe(base_run, tmp_path, ["none", "error"])
    res = {r.rule: r for r in evaluate(run, Policy(required_probe_coverage=2))}
    cov = res["required_probe_coverage"]
    assert cov.status == "fail" and cov.actual == "1/2" and "ranks 2" in cov.message
    res = {r.rule: r for r in evaluate(run, Policy(required_probe_coverage=1))}
    assert res["required_probe_coverage"].status == "pass"


def test_disabled_rules_are_skipped(base_run, tmp_path):
    run = with_probe(base_run, tmp_path, ["verbatim"])
    pol = tmp_path / "p.yaml"
    pol.write_text("max_extracted_captions: null\nmax_verbatim_copies: null\nrequired_probe_coverage: 1\n")
    xml = tmp_path / "j.xml"
    assert main(["gate", str(run), "--policy", str(pol), "--junit", str(xml)]) == 0
    cases = junit(xml)
    assert len(cases) == 6
    assert {n for n, c in cases.items() if c.find("skipped") is not None} == {
        "max_extracted_captions", "max_verbatim_copies", "max_duplicate_rate", "max_cluster_size"}


def test_could_not_evaluate(base_run, tmp_path, capsys):
    pol = write_policy(tmp_path / "p.yaml")
    xml = tmp_path / "j.xml"
    # the run folder does not exist
    assert main(["gate", str(tmp_path / "missing"), "--policy", str(pol), "--junit", str(xml)]) == 2
    assert ET.parse(xml).getroot().find("testsuite/testcase/error") is not None
    # the probe never ran: the probe rules cannot be evaluated, nothing failed -> 2
    run = tmp_path / "noprobe"
    shutil.copytree(base_run, run)
    assert main(["gate", str(run), "--policy", str(pol), "--junit", str(xml)]) == 2
    cases = junit(xml)
    errs = {n for n, c in cases.items() if c.find("error") is not None}
    assert errs == {"max_extracted_captions", "max_verbatim_copies", "required_probe_coverage"}
    assert "probe/" in cases["max_verbatim_copies"].find("error").get("message")
    # an unreadable results table
    (run / "probe").mkdir()
    (run / "probe" / "results.parquet").write_bytes(b"PAR1 garbage")
    assert main(["gate", str(run), "--policy", str(pol)]) == 2
    assert "unreadable" in capsys.readouterr().out
    # a failure wins over a missing input: the definite violation is reported as 1
    assert main(["gate", str(run), "--policy", str(write_policy(tmp_path / "q.yaml", max_cluster_size=1))]) == 1
    # bad and missing policies
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_verbatim_copies: -1\n")
    assert main(["gate", str(run), "--policy", str(bad)]) == 2
    bad.write_text("max_verbatim_copie: 0\n")  # typo: unknown key
    assert main(["gate", str(run), "--policy", str(bad)]) == 2
    bad.write_text("- a list\n")
    assert main(["gate", str(run), "--policy", str(bad)]) == 2
    assert main(["gate", str(run), "--policy", str(tmp_path / "nope.yaml"), "--junit", str(xml)]) == 2
    assert ET.parse(xml).getroot().find("testsuite/testcase").get("name") == "evaluate"
    assert exit_code([]) == 0


# --- end to end: index -> dedup -> probe (a model that memorized one photo) -> report -> gate ----------------
MEMO = "the famous red barn photograph"


def memorizing_model(prompts, seeds, data="", ref="", **params):
    """A 'model' that regurgitates the training photo ``ref`` (with sensor-like noise) for MEMO, and draws
    other real photos (``data``'s ImageNet files, chosen by seed) for every other prompt."""
    import numpy as np

    out = []
    for p, s in zip(prompts, seeds):
        rng = np.random.default_rng(s)
        if p == MEMO:
            im = Image.open(ref).convert("RGB").resize((192, 128), Image.BICUBIC)
            a = np.asarray(im, dtype=np.float32) + rng.normal(0, 3, (128, 192, 3))
            out.append(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
        else:
            files = sorted(Path(data).glob("*.jpg"))
            out.append(Image.open(files[int(rng.integers(0, 50))]).convert("RGB").resize((192, 128)))
    return out


def test_end_to_end_release_gate(tmp_path, kodak, imagenet, capsys):
    from auditor.config import AuditorConfig, load_config
    from auditor.dedup.runner import run_dedup
    from auditor.index.runner import run_index
    from auditor.probe.config import ProbeConfig
    from auditor.probe.runner import run_probe
    from auditor.report.config import ReportConfig
    from auditor.report.render import build_report

    ds = tmp_path / "dataset"
    ds.mkdir()
    captions = ["a harbour with boats", "a woman in a hat", "macaws on a branch", "a white house by a lake",
                "a motorbike race", "a sailing boat"]
    for p, c in zip(kodak[1:7], captions):
        shutil.copy(p, ds / p.name)
        (ds / (p.stem + ".txt")).write_text(c, encoding="utf-8")
    barn = Image.open(kodak[0]).convert("RGB")
    for i, q in enumerate((95, 80, 70)):  # the memorized photo, three times in the training set
        barn.save(ds / f"barn_{i}.jpg", format="JPEG", quality=q)
        (ds / f"barn_{i}.txt").write_text(MEMO, encoding="utf-8")
    run = tmp_path / "run"
    cfg = load_config(overrides=["index.workers=0", "index.progress=false", "dedup.progress=false"])
    run_index(str(ds.resolve()), run, cfg)
    run_dedup(run, cfg)
    probe = ProbeConfig(generator="python", model="memorizing-test-model", steps=1, top_n=10, progress=False,
                        screen_generations=2, confirm_generations=4, calibration_captions=3, clique_k=3,
                        python={"callable": f"{__name__}:memorizing_model",
                                "params": {"data": str(imagenet[0].parent), "ref": str(ds / "barn_0.jpg")}})
    res = run_probe(run, AuditorConfig(probe=probe)).set_index("caption")
    assert res.loc[MEMO, "verdict"] == "verbatim"

    out = build_report(run, ReportConfig(progress=False), tmp_path / "report" / "report.html")
    html = out.read_text(encoding="utf-8")
    summary = __import__("json").loads((out.parent / "summary.json").read_text())
    assert summary["stages"] == {"index": "ok", "dedup": "ok", "probe": "ok"}
    assert summary["probe"]["n_extracted_captions"] == 1 and summary["probe"]["extracted"][0]["caption"] == MEMO
    assert summary["dedup"]["max_cluster_size"] == 3
    assert "Evidence saved by the probe" in html and "leaves the probe folder" not in html
    assert "does not exist" not in html and "unavailable" not in html  # every generation/training image shown
    assert MEMO in (out.parent / "summary.md").read_text()

    pol = write_policy(tmp_path / "p.yaml", max_cluster_size=5, max_duplicate_rate=0.1, required_probe_coverage=1)
    xml = tmp_path / "gate.xml"
    assert main(["gate", str(run), "--policy", str(pol), "--junit", str(xml)]) == 1
    cases = junit(xml)
    failed = {n for n, c in cases.items() if c.find("failure") is not None}
    assert failed == {"max_extracted_captions", "max_verbatim_copies", "max_duplicate_rate"}
    assert MEMO in cases["max_extracted_captions"].find("failure").get("message")
    # with the memorized cluster removed from the policy's concern, the same run passes
    ok = write_policy(tmp_path / "ok.yaml", max_extracted_captions=1, max_verbatim_copies=10, max_duplicate_rate=0.5,
                      max_cluster_size=5, required_probe_coverage=1)
    assert main(["gate", str(run), "--policy", str(ok)]) == 0


def test_coverage_matches_prompts_by_normalised_caption(base_run, tmp_path):
    """The probe prompts each normalised caption once: a risk row is covered by a probe of its caption written
    differently (case, punctuation), and not by an unrelated one."""
    run = with_probe(base_run, tmp_path, ["none", "none"])
    risk = pd.read_parquet(run / "dedup" / "risk.parquet").sort_values("rank")
    res = pd.read_parquet(run / "probe" / "results.parquet")
    res["cluster_id"] = -1  # cover by caption alone
    res.loc[0, "caption"] = str(risk.iloc[0]["caption"]).upper() + " !"
    res.loc[1, "caption"] = "an unrelated prompt"
    write_parquet(run / "probe" / "results.parquet", res)
    cov = {r.rule: r for r in evaluate(run, Policy(required_probe_coverage=2))}["required_probe_coverage"]
    assert cov.status == "fail" and cov.actual == "1/2" and "ranks 2" in cov.message


# --- fail closed (issue 19): a probe that could not run is exit 2 whatever the policy -------------------------


def test_gate_fails_closed_when_every_probe_request_failed(base_run, tmp_path, capsys):
    from auditor.cli import main

    run = with_probe(base_run, tmp_path, ["error", "error"])
    # no coverage rule, only probe-result rules that would read 0 extractions / 0 copies: used to exit 0
    pol = tmp_path / "lenient.yaml"
    pol.write_text("max_extracted_captions: 0\nmax_verbatim_copies: 0\nrequired_probe_coverage: null\n"
                   "max_duplicate_rate: null\nmax_cluster_size: null\n")
    assert main(["gate", str(run), "--policy", str(pol), "--junit", str(tmp_path / "j.xml")]) == 2
    out = capsys.readouterr().out
    assert "COULD NOT EVALUATE" in out
    cases = junit(tmp_path / "j.xml")
    assert "every probe request failed" in cases["probe_evaluable"].find("error").get("message")
    # even a policy whose only rule fails on dedup gives 2, not 1: the probe is unknown
    pol.write_text("max_cluster_size: 1\nmax_extracted_captions: null\nmax_verbatim_copies: null\n")
    assert main(["gate", str(run), "--policy", str(pol)]) == 2


def test_gate_fails_closed_when_no_top_cluster_was_probed(base_run, tmp_path):
    run = with_probe(base_run, tmp_path, ["none"])
    res = pd.read_parquet(run / "probe" / "results.parquet")
    res["cluster_id"] = -12345
    res["caption"] = "a prompt that matches no risky cluster"
    write_parquet(run / "probe" / "results.parquet", res)
    results = evaluate(run, Policy(required_probe_coverage=None))
    first = results[0]
    assert first.rule == "probe_evaluable" and first.status == "error"
    assert "none of the top" in first.message
    from auditor.gate import exit_code
    assert exit_code(results) == 2


def test_gate_probe_evaluable_passes_on_a_real_probe(base_run, tmp_path):
    run = with_probe(base_run, tmp_path, ["none", "error"])
    first = evaluate(run, Policy(required_probe_coverage=None))[0]
    assert first.rule == "probe_evaluable" and first.status == "pass" and first.actual == "1/2"
