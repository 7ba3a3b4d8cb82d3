"""Reference images named in a ``--prompts`` file (issue 15, item 3): an index key, a local path and a URL on a
loopback ``python -m http.server`` are used as the caption's references (verdicts and ``reference_source``), a 404
URL, a closed port and bytes that are not an image are recorded in ``probe/errors.parquet`` and never fatal; with
and without an index; fetched images cached under ``probe/references/`` by the sha256 of the URL."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from auditor.evaluation.probe_cases import jpeg, overlay
from auditor.probe.config import ProbeConfig
from auditor.probe.prompt_refs import SOURCE_PATH, SOURCE_URL, PromptReferences


def stub_generator(prompts, seeds, data="", copies="{}", **params):
    """``copies`` maps a prompt to a photo file (under ``data``), returned with a badge on one tile and JPEG q40 (a
    different badge position per seed); any other prompt gets a photo of ``data/pool`` chosen by (prompt, seed)."""
    copies = json.loads(copies)
    pool = sorted((Path(data) / "pool").iterdir())
    out = []
    for p, s in zip(prompts, seeds):
        if p in copies:
            im = Image.open(Path(data) / copies[p]).convert("RGB")
            out.append(jpeg(overlay(im, "badge", np.random.default_rng(s)), 40))
        else:
            h = int(hashlib.sha256(f"{p}\0{s}".encode()).hexdigest(), 16)
            out.append(Image.open(pool[h % len(pool)]).convert("RGB"))
    return out


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory, imagenet):
    """train/ (indexed), web/ (served over HTTP), pool/ (unrelated generations), prompts/refs/ (local files)."""
    root = tmp_path_factory.mktemp("refs")
    folders = {n: root / n for n in ("train", "web", "pool", "prompts/refs")}
    for f in folders.values():
        f.mkdir(parents=True)
    split = {"train": imagenet[:6], "web": imagenet[6:8], "pool": imagenet[8:12], "prompts/refs": imagenet[12:13]}
    for name, files in split.items():
        for p in files:
            shutil.copyfile(p, folders[name] / p.name)
    (folders["web"] / "notes.txt").write_text("not an image\n", encoding="utf-8")
    (folders["web"] / "sub").mkdir()  # /sub -> 301 /sub/ (a same-origin redirect) -> an HTML listing
    return root


@pytest.fixture(scope="module")
def server(data):
    """``python -m http.server --bind 127.0.0.1`` on a free port serving data/web; stopped by its PID."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", str(data / "web")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(20)
    try:
        assert line and " port " in line[0], f"http.server did not start: {line}"
        port = int(line[0].split(" port ")[1].split()[0])
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _probe(run: Path, prompts: Path, data: Path, copies: dict, *extra: str) -> int:
    from auditor.cli import main

    params = json.dumps({"data": str(data), "copies": json.dumps(copies)})
    return main(["probe", str(run), "--prompts", str(prompts), "--generator", "python",
                 "--callable", f"{__name__}:stub_generator", "--no-progress",
                 "--set", f"probe.python.params={params}", "--set", "probe.screen=none",
                 "--set", "probe.confirm_generations=2", "--set", "probe.steps=1",
                 "--set", "probe.compare_max_side=256", "--set", "probe.reference_retries=0", *extra])


def test_prompt_file_references_with_an_index(data, server, tmp_path):
    """A prompts CSV whose references are a local path, a URL, an index key, a 404 URL and a closed port. The
    generations of the first three copy their reference (badge + JPEG q40): verbatim against it, with the source
    named; the two failures are recorded and their captions (unrelated generations) probed to none; exit 0."""
    from auditor.config import load_config
    from auditor.index.runner import run_index
    from auditor.index.store import IndexStore

    train = sorted((data / "train").iterdir())
    caps = pd.DataFrame({"key": [p.name for p in train], "caption": [f"an indexed photo {i}" for i in range(6)]})
    caps.to_csv(tmp_path / "caps.csv", index=False)
    run = tmp_path / "run"
    cfg = load_config(overrides=["index.workers=0", "index.progress=false",
                                 f"index.reader.captions_file={tmp_path / 'caps.csv'}"])
    run_index(str(data / "train"), run, cfg.index)
    table = IndexStore(run).table(columns=["key", "shard", "caption"])
    key_row = table[table["caption"] == "an indexed photo 3"].iloc[0]
    web = sorted(p.name for p in (data / "web").glob("*.jpg"))
    local = next((data / "prompts" / "refs").iterdir()).name
    closed = _closed_port()
    rows = [("a red-team prompt with a local file", f"refs/{local}"),
            ("a red-team prompt with a URL", f"{server}/{web[0]}?sig=secret"),
            ("a red-team prompt with an index key", str(key_row["key"])),
            ("a red-team prompt with a 404", f"{server}/missing.jpg"),
            ("a red-team prompt with a closed port", f"http://127.0.0.1:{closed}/x.jpg")]
    prompts = data / "prompts" / "list.csv"
    pd.DataFrame(rows, columns=["prompt", "url"]).to_csv(prompts, sep=";", index=False)
    copies = {rows[0][0]: f"prompts/refs/{local}", rows[1][0]: f"web/{web[0]}",
              rows[2][0]: f"train/{train[3].name}"}
    assert _probe(run, prompts, data, copies, "--set", "probe.calibration_captions=4") == 0

    res = pd.read_parquet(run / "probe" / "results.parquet").set_index("caption")
    path_r, url_r, key_r, e404, eclosed = (res.loc[c] for c, _ in rows)
    assert path_r["verdict"] == "verbatim" and path_r["reference_source"] == SOURCE_PATH
    assert path_r["best_key"] == f"refs/{local}" and path_r["best_shard"] == ""
    assert url_r["verdict"] == "verbatim" and url_r["reference_source"] == SOURCE_URL
    assert url_r["best_key"] == f"{server}/{web[0]}"  # the query (a signature) is never written
    assert key_r["verdict"] == "verbatim" and key_r["reference_source"] == "prompt_file:key"
    assert (key_r["best_key"], key_r["best_shard"]) == (str(key_row["key"]), str(key_row["shard"]))
    assert e404["verdict"] == "none" and eclosed["verdict"] == "none"
    gens = pd.read_parquet(run / "probe" / "generations.parquet")
    for cap, src in ((rows[0][0], SOURCE_PATH), (rows[1][0], SOURCE_URL), (rows[2][0], "prompt_file:key")):
        g = gens[gens["caption"] == cap]
        assert (g["verdict"] == "verbatim").all() and (g["reference_source"] == src).all(), cap
    errs = pd.read_parquet(run / "probe" / "errors.parquet")
    errs = errs[errs["stage"] == "probe.reference"].set_index("key")
    assert "HTTP 404" in errs.loc[f"{server}/missing.jpg", "error"]
    assert "connection error" in errs.loc[f"http://127.0.0.1:{closed}/x.jpg", "error"]
    assert "cluster -4" in errs.loc[f"{server}/missing.jpg", "error"] and len(errs) == 2
    cached = run / "probe" / "references" / hashlib.sha256(rows[1][1].encode()).hexdigest()
    assert cached.read_bytes() == (data / "web" / web[0]).read_bytes()
    assert "secret" not in (run / "probe" / "provenance.json").read_text()
    # the report names the source beside the generation (a URL/path reference is not an indexed image)
    from auditor.report.config import ReportConfig
    from auditor.report.render import build_report

    html = build_report(run, ReportConfig(progress=False), tmp_path / "report" / "report.html").read_text()
    assert "prompts file" in html and "shown in the evidence image" in html and "sig=secret" not in html


def test_prompt_file_references_without_an_index(data, server, tmp_path):
    """No index at all: a local path and a URL still give references (verbatim, with their source); a URL to an
    HTML page (after a same-origin redirect) and a text file are recorded as not images, never fatal."""
    web = sorted(p.name for p in (data / "web").glob("*.jpg"))
    local = next((data / "prompts" / "refs").iterdir())
    rows = [("copy of a local file", str(local)),  # absolute: written relative to the prompts file's folder
            ("copy of a URL", f"{server}/{web[1]}"),
            ("a page, not an image", f"{server}/sub"),
            ("a text file", f"{server}/notes.txt")]
    prompts = data / "prompts" / "noindex.jsonl"
    prompts.write_text("\n".join(json.dumps({"caption": c, "reference": r}) for c, r in rows), encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    copies = {rows[0][0]: f"prompts/refs/{local.name}", rows[1][0]: f"web/{web[1]}"}
    assert _probe(run, prompts, data, copies) == 0
    res = pd.read_parquet(run / "probe" / "results.parquet").set_index("caption")
    assert res.loc[rows[0][0], "verdict"] == "verbatim" and res.loc[rows[0][0], "best_key"] == f"refs/{local.name}"
    assert res.loc[rows[0][0], "reference_source"] == SOURCE_PATH
    assert res.loc[rows[1][0], "verdict"] == "verbatim" and res.loc[rows[1][0], "reference_source"] == SOURCE_URL
    assert set(res.loc[[rows[2][0], rows[3][0]], "verdict"]) == {"none"}
    errs = pd.read_parquet(run / "probe" / "errors.parquet").set_index("key")
    assert "not a decodable image" in errs.loc[f"{server}/sub", "error"]
    assert "not a decodable image" in errs.loc[f"{server}/notes.txt", "error"]


def test_only_the_captions_the_budget_reaches_are_fetched(data, server, tmp_path):
    """A UNet budget for one caption's confirm generations: the second caption's URL (a 404) is never fetched, so
    nothing is recorded for it; the first caption is judged against its fetched reference."""
    web = sorted(p.name for p in (data / "web").glob("*.jpg"))
    rows = [("budgeted copy of a URL", f"{server}/{web[0]}"), ("past the budget", f"{server}/never-asked.jpg")]
    prompts = data / "prompts" / "budget.csv"
    pd.DataFrame(rows, columns=["caption", "reference"]).to_csv(prompts, index=False)
    run = tmp_path / "run"
    run.mkdir()
    # steps=1 with guidance: 2 UNet evaluations per image, 2 confirm generations per caption
    assert _probe(run, prompts, data, {rows[0][0]: f"web/{web[0]}"}, "--budget", "4") == 0
    res = pd.read_parquet(run / "probe" / "results.parquet").set_index("caption")
    assert res.loc[rows[0][0], "verdict"] == "verbatim" and res.loc[rows[0][0], "reference_source"] == SOURCE_URL
    assert res.loc[rows[1][0], "n_generations"] == 0 and "budget exhausted" in res.loc[rows[1][0], "error"]
    assert pd.read_parquet(run / "probe" / "errors.parquet").empty


def test_fetch_cache_caps_and_what_is_written(data, server, tmp_path):
    """A cached URL is read from probe/references/ (never fetched again: here its port is closed); a reference
    over reference_max_bytes is refused; a server that never answers is cut at reference_timeout_s;
    fetch_references=false leaves URLs alone; user info and query are never
    written; a missing path names where it was looked for."""
    errors: list = []
    cfg = ProbeConfig(progress=False, reference_retries=0)
    refs = PromptReferences(cfg, tmp_path / "cache", data / "prompts", None, errors)
    url = f"http://127.0.0.1:{_closed_port()}/gone.jpg"
    src = next((data / "web").glob("*.jpg"))
    refs.cache_path(url).parent.mkdir(parents=True)
    shutil.copyfile(src, refs.cache_path(url))
    got = refs.get(url, -1)
    assert got is not None and got.source == SOURCE_URL and refs.counts["cached"] == 1 and not errors
    assert got.image.size == Image.open(src).size
    assert refs.get(url, -1) is got  # once per reference

    small = PromptReferences(ProbeConfig(progress=False, reference_max_bytes=1000), tmp_path / "c2",
                             data / "prompts", None, errors)
    assert small.get(f"{server}/{src.name}", -2) is None and "over the 1000-byte limit" in errors[-1].error
    assert small.get(f"refs/{next((data / 'prompts' / 'refs').iterdir()).name}", -3) is None
    assert "too_many_bytes" in errors[-1].error
    assert small.get("no/such/file.png", -4) is None and "looked beside the prompts file" in errors[-1].error

    with socket.socket() as mute:  # accepts connections (the backlog) and never answers: a read timeout
        mute.bind(("127.0.0.1", 0))
        mute.listen(4)
        slow = PromptReferences(ProbeConfig(progress=False, reference_timeout_s=0.5, reference_retries=0),
                                tmp_path / "c4", None, None, errors)
        assert slow.get(f"http://127.0.0.1:{mute.getsockname()[1]}/slow.jpg", -6) is None
    assert "timeout after 0.5s" in errors[-1].error and errors[-1].stage == "probe.reference"

    off = PromptReferences(ProbeConfig(progress=False, fetch_references=False), tmp_path / "c3", None, None, errors)
    n = len(errors)
    assert off.get(f"{server}/{src.name}", -5) is None and len(errors) == n and off.counts["skipped"] == 1
    assert not (tmp_path / "c3").exists()
    signed = "https://user:pw@cdn.example.com/a/b.jpg?X-Amz-Signature=s#f"
    assert refs.shown(signed) == "https://cdn.example.com/a/b.jpg"
    assert refs.shown(str(data / "prompts" / "refs" / "x.png")) == "refs/x.png"
    assert refs.shown("/elsewhere/secret/y.png") == "y.png"
