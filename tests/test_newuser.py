"""A new user's first hour, as they type it: the ``auditor`` console script in a subprocess, from folders that are
not the checkout. The README's demo from a fresh folder with its default relative out dir; ``auditor index`` from
a folder holding a directory named ``auditor``; a script calling ``run_index`` without a ``__main__`` guard; every
ordinary mistake giving exactly one ``auditor: error:`` line on stderr, no traceback, and exit 2 (a bad argument
or configuration) or 1 (a runtime failure)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

AUDITOR = Path(sys.executable).parent / "auditor"
REPO = Path(__file__).resolve().parents[1]


def auditor(*argv, cwd: Path, timeout: float = 600, check_rc=None) -> subprocess.CompletedProcess:
    """Run the installed ``auditor`` console script as a user would (offline, from ``cwd``)."""
    if not AUDITOR.exists():
        pytest.skip(f"the auditor console script is not installed beside {sys.executable} (pip install -e .)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"})
    env.pop("PYTHONPATH", None)  # nothing but the installed package
    proc = subprocess.run([str(AUDITOR), *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def one_error_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Exactly one stderr line, ``auditor: error: ...`` (mentioning ``needles``), no traceback, exit ``code``."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("auditor: error: "), lines[-10:]
    assert proc.returncode == code, (proc.returncode, lines)
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def user(tmp_path_factory, kodak):
    """A user's folder (not the checkout): 8 real photos, one file, a run indexed by the CLI."""
    home = tmp_path_factory.mktemp("newuser")
    photos = home / "photos"
    photos.mkdir()
    for p in kodak[:8]:
        shutil.copy(p, photos / p.name)
    (home / "notes.txt").write_text("not a dataset\n")
    sets = ["--set", "index.progress=false", "--set", "dedup.progress=false"]
    auditor("index", "photos", "--out", "run", "--workers", "0", *sets, cwd=home, check_rc=0)
    return home


@pytest.fixture(scope="module")
def deduped(user, tmp_path_factory):
    """The user's run, deduplicated by the CLI (a copy: the mistakes above must find the run as it was)."""
    home = tmp_path_factory.mktemp("deduped")
    shutil.copytree(user / "run", home / "run")
    auditor("dedup", "run", "--set", "dedup.progress=false", cwd=home, check_rc=0)
    return home


# --- paths: relative to where the user is, never to where a subprocess runs ---------------------------------

def test_index_from_a_folder_holding_a_directory_named_auditor(tmp_path, kodak):
    """The clone's parent holds ``auditor/``: pool workers must still import the installed package."""
    shadow = tmp_path / "auditor"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise RuntimeError('the wrong auditor: imported from the current folder')\n")
    (tmp_path / "photos").mkdir()
    for p in kodak[:6]:
        shutil.copy(p, tmp_path / "photos" / p.name)
    proc = auditor("index", "photos", "--out", "run", "--workers", "2", "--set", "index.progress=false",
                   cwd=tmp_path, check_rc=0)
    assert "indexed 6 samples" in proc.stdout
    info = json.loads((tmp_path / "run" / "index" / "index.json").read_text())
    assert info["counts"]["indexed"] == 6 and info["dataset"]["root"] == str(tmp_path / "photos")


def test_a_script_without_a_main_guard_can_run_the_index_pool(tmp_path, kodak):
    """Workers start without the caller's ``__main__``: an unguarded script runs once, not once per worker."""
    (tmp_path / "photos").mkdir()
    for p in kodak[:6]:
        shutil.copy(p, tmp_path / "photos" / p.name)
    (tmp_path / "script.py").write_text(textwrap.dedent("""
        from auditor.config import load_config
        from auditor.index.runner import run_index
        print("script body")
        store = run_index("photos", "run", load_config(overrides=["index.workers=2", "index.progress=false"]))
        print("indexed", store.info["counts"]["indexed"])
    """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("script body") == 1 and "indexed 6" in proc.stdout, proc.stdout


def test_relative_paths_are_taken_where_typed(deduped):
    """``report run --out out/report.html`` from the user's folder writes where the user is."""
    proc = auditor("report", "run", "--out", "out/report.html", "--set", "report.progress=false", cwd=deduped,
                   check_rc=0)
    assert (deduped / "out" / "report.html").is_file() and str(deduped / "out" / "report.html") in proc.stdout


# --- every ordinary mistake: one line, no traceback, the right exit code -----------------------------------

MISTAKES = {
    # name: (argv, exit code, words the line must hold)
    "file-as-dataset": (["index", "notes.txt", "--out", "r1"], 2, ["notes.txt is a file"]),
    "file-as-run-dir": (["dedup", "notes.txt"], 2, ["notes.txt is a file"]),
    "missing-run-dir": (["report", "no-such-run"], 2, ["no-such-run does not exist"]),
    "typo-in-set": (["index", "photos", "--out", "r2", "--set", "index.wrokers=4"], 2,
                    ["bad configuration: index.wrokers: unknown key (did you mean index.workers?)"]),
    "set-without-equals": (["index", "photos", "--out", "r3", "--set", "index.workers"], 2,
                           ["--set expects dotted.key=value"]),
    "bad-value": (["index", "photos", "--out", "r4", "--set", "index.workers=many"], 2,
                  ["index.workers: Input should be a valid integer"]),
    "invalid-yaml": (["index", "photos", "--out", "r5", "--config", "bad.yaml"], 2, ["bad.yaml: line 3, column 13: invalid YAML"]),
    "missing-config": (["index", "photos", "--out", "r6", "--config", "nope.yaml"], 2, ["nope.yaml not found"]),
    "missing-required": (["index", "photos"], 2, ["--out"]),
    "probe-without-model": (["probe", "run"], 2, ["needs --model"]),
    "probe-missing-model-folder": (["probe", "run", "--model", "./my-sd-pipeline"], 2,
                                   ["--model ./my-sd-pipeline: no such folder"]),
    "probe-model-not-a-pipeline": (["probe", "run", "--model", "photos"], 2, ["not a diffusers pipeline folder"]),
    "probe-uncached-hub-id": (["probe", "run", "--model", "nobody/no-such-model"], 2, ["HF_HUB_OFFLINE"]),
    "apply-manifest-non-empty-out": (["apply-manifest", "run", "--out", "photos"], 2, ["is not empty"]),
    "missing-embedder-weights": (["index", "photos", "--out", "r7", "--embedder", "sscd"], 2, ["no checkpoint"]),
    "missing-checkpoint-file": (["index", "photos", "--out", "r8", "--embedder", "onnx", "--checkpoint",
                                 "missing.onnx"], 2, ["checkpoint file not found"]),
    "missing-policy": (["gate", "run", "--policy", "no-such-policy.yaml"], 2, ["no-such-policy.yaml not found"]),
    "guard-without-images": (["guard", "run"], 2, ["give IMAGE files"]),
    "out-inside-dataset": (["index", "photos", "--out", "photos/run"], 2, ["inside the input dataset"]),
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_mistake_is_one_line_and_its_exit_code(user, name):
    argv, code, needles = MISTAKES[name]
    (user / "bad.yaml").write_text("index:\n  workers: [1\n  chunk_size: 3\n")
    before = sorted(p.relative_to(user).as_posix() for p in user.rglob("*"))
    one_error_line(auditor(*argv, cwd=user), code, *needles)
    after = sorted(p.relative_to(user).as_posix() for p in user.rglob("*"))
    assert after == before, set(after) ^ set(before)  # a refused command writes nothing


@pytest.mark.parametrize("argv", [["index", "photos", "--out", "r9"], ["dedup", "run"],
                                  ["apply-manifest", "run", "--out", "kept"], ["probe", "run", "--model", "x"],
                                  ["report", "run"], ["guard", "run", "photos/kodak01.png"], ["lab"], ["demo"]],
                         ids=lambda a: a[0])
def test_every_command_reports_bad_configuration_the_same_way(user, argv):
    one_error_line(auditor(*argv, "--set", "nope.key=1", cwd=user), 2, "bad configuration: nope: unknown key")


def test_verbose_shows_the_traceback(user):
    proc = auditor("-v", "index", "photos", "--out", "r10", "--embedder", "sscd", cwd=user)
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("auditor: error: ")


def test_shipped_configs_by_name_from_any_folder(user, deduped):
    """``--config carlini2023`` and ``--policy policy`` name files shipped in the package."""
    proc = auditor("gate", "run", "--policy", "policy", cwd=deduped)
    assert proc.returncode in (0, 2) and "auditor gate:" in proc.stdout, (proc.stdout, proc.stderr)  # no probe yet
    assert "not found" not in proc.stderr
    one_error_line(auditor("index", "photos", "--out", "r11", "--config", "carlini2023", "--set", "index.wrokers=1",
                           cwd=user), 2, "did you mean index.workers?")


def test_help_texts_have_no_rest_markup_and_every_option_is_explained(user):
    import argparse

    from auditor.cli import build_parser

    assert "``" not in auditor("--help", cwd=user, check_rc=0).stdout
    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    for command in ("index", "dedup", "apply-manifest", "probe", "report", "gate", "guard", "lab", "demo"):
        assert "``" not in auditor(command, "--help", cwd=user, check_rc=0).stdout, command
        for action in commands[command]._actions:  # noqa: SLF001
            if not isinstance(action, argparse._HelpAction):  # noqa: SLF001
                assert action.help, f"auditor {command}: {action.option_strings or action.dest} has no help"


# --- the probe: a mistake never locks the run folder; a mismatch names the keys that differ --------------------

def test_a_mistaken_probe_does_not_block_the_corrected_one(deduped, tmp_path):
    """A probe refused for a bad input writes no fingerprint; the corrected command runs; a real change of config
    is refused with one line naming only the key that changed."""
    run = tmp_path / "run"
    shutil.copytree(deduped / "run", run)
    (tmp_path / "gen_helper.py").write_text(textwrap.dedent("""
        import numpy as np
        from PIL import Image

        def noise(prompts, seeds, **params):
            return [Image.fromarray(np.random.default_rng(s).integers(0, 255, (64, 64, 3), dtype=np.uint8))
                    for s in seeds]
    """))
    light = ["--generator", "python", "--no-progress", "--top-n", "2", "--set", "probe.screen=none",
             "--set", "probe.confirm_generations=2", "--set", "probe.calibration_captions=2"]
    wrong = _probe(tmp_path, run, light + ["--callable", "gen_helpr:noise"])  # a typo in the module name
    one_error_line(wrong, 2, "gen_helpr")
    assert not (run / "probe" / "fingerprint.json").exists()
    fixed = _probe(tmp_path, run, light + ["--callable", "gen_helper:noise"])
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert (run / "probe" / "fingerprint.json").exists() and (run / "probe" / "results.parquet").exists()
    changed = _probe(tmp_path, run, light + ["--callable", "gen_helper:noise", "--set", "probe.steps=7"])
    line = one_error_line(changed, 2, "different config", "changed: probe.steps: 50 -> 7")
    assert line.count("->") == 1 and len(line) < 400, line


def _probe(cwd: Path, run: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """``auditor probe`` with the user's own generator module importable (PYTHONPATH=cwd)."""
    if not AUDITOR.exists():
        pytest.skip(f"the auditor console script is not installed beside {sys.executable}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(cwd)})
    return subprocess.run([str(AUDITOR), "probe", str(run), *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_index_mismatch_names_only_the_keys_that_differ(user, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(user / "run", run)
    proc = auditor("index", user / "photos", "--out", run, "--workers", "0", "--set", "index.progress=false",
                   "--set", "index.decode.max_pixels=1000000", cwd=tmp_path)
    line = one_error_line(proc, 2, "different index config", "index.decode.max_pixels:")
    assert line.count("->") == 1 and len(line) < 400, line


# --- the README's demo, from a fresh folder, with its default relative out dir -------------------------------

LIGHT_LAB = """\
lab:
  copy_counts: [6, 2]
  singletons: 4
  max_side: 64
  vae_steps: 3
  train_steps: 4
  batch_size: 4
  eval_generations: 1
  eval_steps: 2
probe:
  steps: 2
  confirm_generations: 2
  calibration_captions: 2
"""


@pytest.mark.network_loopback
def test_demo_from_a_fresh_folder_with_the_default_out_dir(tmp_path):
    """``auditor demo`` as typed, from a folder that is not the checkout (a light lab config: training for four
    steps); the img2dataset shards, the report and lab.json land in ./auditor-demo of that folder."""
    (tmp_path / "light.yaml").write_text(LIGHT_LAB)
    proc = auditor("demo", "--config", "light.yaml", "--no-progress", cwd=tmp_path, timeout=900, check_rc=0)
    out = tmp_path / "auditor-demo"
    assert any((out / "dataset").glob("*.tar")), sorted(p.name for p in out.iterdir())
    assert (out / "report.html").is_file() and (out / "lab.json").is_file()
    assert "auditor probe verdicts by planted copy count" in proc.stdout
    assert f"Report: {out / 'report.html'}" in proc.stdout
    summary = json.loads((out / "lab.json").read_text())
    assert summary["dataset"]["downloaded"] == summary["dataset"]["images"] == 6 + 2 + 4
