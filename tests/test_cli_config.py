"""Every command: a bad ``--set`` or YAML key is one ``auditor: error: bad configuration: ...`` line, exit 2, before
any work (issue 16 item 2); flags are tables of dotted config keys; config flows down to each stage's section."""

from __future__ import annotations

import argparse

import pytest

from auditor.cli import main

# every command that takes --config / --set, with the arguments it needs to get as far as loading its config
COMMANDS = {
    "index": ["DATASET", "--out", "OUT"],
    "dedup": ["RUN"],
    "apply-manifest": ["RUN", "--out", "OUT"],
    "probe": ["RUN"],
    "report": ["RUN"],
    "guard": ["RUN", "img.png"],
    "lab": ["--out", "OUT"],
    "demo": ["--out", "OUT"],
}


def _args(command: str, tmp_path) -> list[str]:
    subst = {"DATASET": str(tmp_path / "missing-dataset"), "OUT": str(tmp_path / "out"), "RUN": str(tmp_path / "run")}
    return [command] + [subst.get(a, a) for a in COMMANDS[command]]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_set_key_is_one_line_exit_2(command, tmp_path, capsys):
    code = main(_args(command, tmp_path) + ["--set", "index.wrokers=2"])
    line = _one_error_line(capsys)
    assert code == 2
    assert line.startswith("auditor: error: bad configuration: index.wrokers: unknown key"), line
    assert "did you mean index.workers" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_yaml_key_is_one_line_exit_2(command, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("dedup:\n  phash_max_distance: [1, 2]\n", encoding="utf-8")
    code = main(_args(command, tmp_path) + ["--config", str(cfg)])
    line = _one_error_line(capsys)
    assert code == 2
    assert line.startswith("auditor: error: bad configuration: dedup.phash_max_distance:"), line


def test_bad_lab_key_is_refused_by_the_lab(tmp_path, capsys):
    assert main(_args("lab", tmp_path) + ["--set", "lab.sed=3"]) == 2
    assert "bad configuration: lab.sed: unknown key (did you mean lab.seed?)" in _one_error_line(capsys)


def test_gate_bad_policy_key_is_one_line_exit_2(tmp_path, capsys):
    pol = tmp_path / "policy.yaml"
    pol.write_text("max_duplicate_rat: 0.1\n", encoding="utf-8")
    (tmp_path / "run").mkdir()
    assert main(["gate", str(tmp_path / "run"), "--policy", str(pol)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("auditor: error: gate: bad policy") and "max_duplicate_rat" in line, line


def test_shared_yaml_with_the_lab_section_is_read_by_every_stage():
    """default.yaml spells out every section, the lab's too: the stages' config drops the section it does not
    own, the lab's config validates it."""
    from auditor.config import AuditorConfig, load_config
    from auditor.lab.config import LabRunConfig

    cfg = load_config("default")
    assert type(cfg) is AuditorConfig and "lab" not in cfg.model_dump()
    assert load_config("default", ["lab.seed=5"], model=LabRunConfig).lab.seed == 5


def test_flag_tables_set_dotted_keys():
    from auditor.cliutil import flag_values
    from auditor.index.cli import FLAGS as INDEX_FLAGS
    from auditor.probe.cli import FLAGS as PROBE_FLAGS

    ns = argparse.Namespace(workers=3, engine=None, embedder="none", layout=None, model=None, pretrained=None,
                            checkpoint=None)
    assert flag_values(ns, INDEX_FLAGS) == {"index": {"workers": 3, "embedder": {"name": "none"}}}
    ns = argparse.Namespace(url="http://127.0.0.1:1/gen", progress=False, top_n=None)
    assert flag_values(ns, PROBE_FLAGS) == {"probe": {"http": {"url": "http://127.0.0.1:1/gen"}, "progress": False}}
    from auditor.config import load_config

    cfg = load_config(None, ["probe.progress=true", "probe.top_n=7"], top=flag_values(ns, PROBE_FLAGS))
    assert cfg.probe.progress is False and cfg.probe.top_n == 7  # the flag wins over --set


def test_stage_clis_do_not_import_the_entry_point():
    """Stage CLIs take their shared helpers from auditor/cliutil.py; auditor/cli.py only wires them."""
    import ast
    from pathlib import Path

    import auditor

    root = Path(auditor.__file__).parent
    offenders = []
    for p in sorted(root.rglob("*.py")):
        if p in (root / "cli.py", root / "__main__.py"):
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                target = mod if node.level == 0 else ".".join(
                    p.relative_to(root.parent).with_suffix("").parts[: -node.level] + ((mod,) if mod else ()))
                if target == "auditor.cli" or (target == "auditor" and any(a.name == "cli" for a in node.names)):
                    offenders.append(str(p.relative_to(root)))
    assert offenders == []
