"""Faults around a run: a misbehaving image API during a whole `auditor probe` run (HTTP 5xx, timeouts, malformed
JSON, oversized and flaky responses), a full disk (a real tmpfs when it can be mounted; RLIMIT_FSIZE otherwise),
and unwritable outputs (a path whose parent is a file; a root-owned folder written as ``nobody``).

Every fault ends one of two ways: the run finishes with per-item errors recorded (the API faults), or the CLI
stops with exit status 1 and one line ``auditor: error: ...`` on stderr (no traceback), and no file under a
final name is half-written, so a rerun once the fault is gone ends with the same bytes as an undisturbed run.
Generator-level behaviour of the http client (one request at a time) is in tests/test_probe_generators.py.
"""

from __future__ import annotations

import base64
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.helpers import JsonStubHandler
from PIL import Image

from support.reliability import CORPUS_SETS, real_photos, build_webdataset  # noqa: E402
from support.crash import assert_complete_files, leftovers, tree  # noqa: E402


def _main(argv) -> int:
    from auditor.cli import main

    return main([str(a) for a in argv])


# ------------------------------------------------------------------------------------------------------------
# a whole `auditor probe` run against a misbehaving image API
# ------------------------------------------------------------------------------------------------------------
class _Api(JsonStubHandler):
    """Behaviour chosen by the prompt's first word."""

    hits: dict[tuple[str, int], int] = {}
    lock = threading.Lock()

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt, seed = req["prompt"], int(req["seed"])
        with self.lock:
            n = self.hits[(prompt, seed)] = self.hits.get((prompt, seed), 0) + 1
        rng = np.random.default_rng(seed + 1000 * len(prompt))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(buf, "PNG")
        ok = json.dumps({"images": [base64.b64encode(buf.getvalue()).decode()]}).encode()
        word = prompt.split()[0]
        if word == "error500":
            self._send(500, b'{"error": "internal"}')
        elif word == "slow":
            time.sleep(1.0)
            self._send(200, ok)
        elif word == "badjson":
            self._send(200, b'{"images": ["abc')
        elif word == "huge":
            self._send(200, json.dumps({"images": [base64.b64encode(buf.getvalue()).decode()],
                                        "padding": "x" * 300_000}).encode())
        elif word == "flaky" and n <= 2:
            self._send(503, b"{}")
        else:
            self._send(200, ok)


@pytest.fixture(scope="module")
def api():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/generate"
    srv.shutdown()
    srv.server_close()


FAULT_CAPTIONS = {"error500": "error500 a lighthouse at dawn", "slow": "slow a red barn in snow",
                  "badjson": "badjson two parrots on a branch", "huge": "huge a sailing boat at sea",
                  "flaky": "flaky a portrait of a girl", "fine": "fine a row of houses"}


@pytest.fixture(scope="module")
def risky_run(tmp_path_factory, kodak) -> Path:
    """Index + dedup of 6 kodak photos, each with a re-encoded copy carrying the same caption: 6 risky captions."""
    base = tmp_path_factory.mktemp("faults")
    data = base / "data"
    data.mkdir()
    caps = {}
    for p, cap in zip(kodak[:6], FAULT_CAPTIONS.values()):
        shutil.copy(p, data / p.name)
        Image.open(p).convert("RGB").save(data / f"{p.stem}_copy.jpg", quality=85)
        caps[p.name] = caps[f"{p.stem}_copy.jpg"] = cap
    pd.DataFrame({"key": list(caps), "caption": list(caps.values())}).to_csv(base / "caps.csv", index=False)
    run = base / "run"
    assert _main(["index", data, "--out", run, "--workers", "0", "--set", f"index.reader.captions_file={base / 'caps.csv'}",
                  *CORPUS_SETS]) == 0
    assert _main(["dedup", run, *CORPUS_SETS]) == 0
    assert set(pd.read_parquet(run / "dedup" / "risk.parquet")["caption"]) == set(FAULT_CAPTIONS.values())
    return run


def _http_probe(run: Path, url: str, concurrency: int) -> list[str]:
    return ["probe", run, "--generator", "http", "--url", url, "--model", "stub-api", "--top-n", "10",
            "--no-progress", "--set", "probe.steps=1", "--set", "probe.screen_generations=2",
            "--set", "probe.confirm_generations=2", "--set", "probe.calibration_captions=0",
            "--set", "probe.http.retries=2", "--set", "probe.http.backoff_s=0", "--set", "probe.http.timeout_s=0.3",
            "--set", "probe.http.max_response_bytes=200000", "--set", f"probe.http.concurrency={concurrency}"]


def test_probe_run_survives_a_misbehaving_api(risky_run, api, tmp_path):
    runs = {}
    for conc in (4, 1):
        run = tmp_path / f"c{conc}"
        shutil.copytree(risky_run, run)
        _Api.hits.clear()
        assert _main(_http_probe(run, api, conc)) == 0  # the run finishes
        runs[conc] = run
        hits = {cap: sum(v for (p, _), v in _Api.hits.items() if p == cap) for cap in FAULT_CAPTIONS.values()}
        # bounded retries: 2 generations per caption; 5xx and timeouts 1 + 2 retries, bad answers once, flaky 2 + 1
        assert hits == {FAULT_CAPTIONS["error500"]: 6, FAULT_CAPTIONS["slow"]: 6, FAULT_CAPTIONS["badjson"]: 2,
                        FAULT_CAPTIONS["huge"]: 2, FAULT_CAPTIONS["flaky"]: 6, FAULT_CAPTIONS["fine"]: 2}, hits

    res = pd.read_parquet(runs[4] / "probe" / "results.parquet").set_index("caption")
    assert set(res.index) == set(FAULT_CAPTIONS.values())
    expect = {"error500": "HTTP 500", "slow": "timeout", "badjson": "malformed JSON", "huge": "limit"}
    for word, msg in expect.items():
        r = res.loc[FAULT_CAPTIONS[word]]
        assert r["verdict"] == "error" and msg in r["error"] and r["n_generations"] == 0, (word, r["error"])
        assert r["n_errors"] == 2 and r["unet_evals"] == 0  # failed requests cost nothing
    assert "3 attempts" in res.loc[FAULT_CAPTIONS["error500"], "error"]
    assert "1 attempt)" in res.loc[FAULT_CAPTIONS["badjson"], "error"]
    for word in ("flaky", "fine"):
        r = res.loc[FAULT_CAPTIONS[word]]
        assert r["verdict"] != "error" and r["n_generations"] == 2 and r["error"] == "", (word, r["error"])
    gens = pd.read_parquet(runs[4] / "probe" / "generations.parquet")
    bad = gens[gens["caption"] == FAULT_CAPTIONS["slow"]]
    assert len(bad) == 2 and (bad["verdict"] == "error").all() and bad["error"].str.contains("timeout").all()

    # the answers do not depend on how many requests were in flight
    a, b = tree(runs[4] / "probe"), tree(runs[1] / "probe")
    assert {k for k in a if a[k] != b.get(k)} == {"provenance.json"}
    pa_, pb = (json.loads((runs[c] / "probe" / "provenance.json").read_text()) for c in (4, 1))
    for p in (pa_, pb):
        p["config"]["http"].pop("concurrency")
    assert pa_ == pb


# ------------------------------------------------------------------------------------------------------------
# disk full, file too large, unwritable outputs
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory, imagenet, kodak) -> tuple[Path, Path]:
    """(webdataset corpus dataset, a complete reference run of index + dedup on it)."""
    base = tmp_path_factory.mktemp("faults_corpus")
    build_webdataset(base / "data", real_photos(imagenet, kodak), base)
    ref = base / "ref"
    assert _main(["index", base / "data", "--out", ref, "--workers", "0", *CORPUS_SETS]) == 0
    assert _main(["dedup", ref, *CORPUS_SETS]) == 0
    return base / "data", ref


def _cli_subprocess(argv, preexec=None, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", "auditor", *map(str, argv)], capture_output=True, text=True,
                          preexec_fn=preexec, env=env, timeout=timeout, cwd="/")


def assert_clean_failure(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 1, no traceback, and the last stderr line (the only one from the CLI: log lines and faiss's
    import chatter come before it) is `auditor: error: ...` mentioning ``needles``."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    ours = [ln for ln in lines if ln.startswith("auditor: error: ")]
    assert len(ours) == 1 and lines[-1] == ours[0], lines[-5:]
    for n in needles:
        assert n in ours[0], ours[0]
    return ours[0]


def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); the RLIMIT_FSIZE test covers it")


def _umount(path: Path):
    subprocess.run(["umount", str(path)], capture_output=True)


def test_disk_full_on_a_real_tmpfs_then_resume(corpus, tmp_path):
    """The run folder lives on a 20 KiB tmpfs: the index fails with ENOSPC, cleanly; moved to a bigger disk,
    the rerun ends identical to an undisturbed run."""
    data, ref = corpus
    small = tmp_path / "small"
    _tmpfs(small, "20k")
    try:
        proc = _cli_subprocess(["index", data, "--out", small / "run", "--workers", "0", *CORPUS_SETS])
        assert_clean_failure(proc, "No space left on device")
        assert_complete_files(small / "run")
        assert (small / "run" / "index" / "index.json").exists()  # it got somewhere before the disk filled
        shutil.copytree(small / "run", tmp_path / "run", ignore=shutil.ignore_patterns(".*.tmp"))
    finally:
        _umount(small)
    assert _main(["index", data, "--out", tmp_path / "run", "--workers", "0", *CORPUS_SETS]) == 0
    assert tree(tmp_path / "run" / "index") == tree(ref / "index")


def _fsize_limit(nbytes: int):
    def pre():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return pre


@pytest.mark.parametrize("stage", ["index", "dedup", "report"])
def test_file_size_limit_fails_cleanly_and_keeps_no_partial_file(stage, corpus, tmp_path):
    """RLIMIT_FSIZE (writes past the limit fail with EFBIG, as on a full disk): clean error, no half-written
    file under a final name; the earlier stages' outputs are untouched."""
    data, ref = corpus
    run = tmp_path / "run"
    if stage == "index":
        argv = ["index", data, "--out", run, "--workers", "0", *CORPUS_SETS]
    else:
        shutil.copytree(ref, run, ignore=shutil.ignore_patterns("dedup") if stage == "dedup" else None)
        argv = (["dedup", run, *CORPUS_SETS] if stage == "dedup"
                else ["report", run, "--out", run / "report" / "report.html", *CORPUS_SETS])
    before = tree(run) if run.exists() else {}
    proc = _cli_subprocess(argv, preexec=_fsize_limit(6_000))
    assert_clean_failure(proc, "File too large")
    assert_complete_files(run)
    after = tree(run)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that existed was damaged
    if stage == "index":
        assert _main(argv) == 0 and tree(run / "index") == tree(ref / "index")
        assert leftovers(run) == []


@pytest.mark.parametrize("stage", ["index", "dedup", "probe", "report"])
def test_output_path_under_a_file_is_a_one_line_error(stage, corpus, tmp_path, capsys):
    data, ref = corpus
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    if stage == "index":
        argv = ["index", data, "--out", blocker / "run", *CORPUS_SETS]
    else:
        run = tmp_path / "run"
        shutil.copytree(ref, run)
        if stage == "dedup":
            shutil.rmtree(run / "dedup")
            (run / "dedup").write_text("a file")
            argv = ["dedup", run, *CORPUS_SETS]
        elif stage == "probe":
            (run / "probe").write_text("a file")
            argv = ["probe", run, "--generator", "http", "--url", "http://127.0.0.1:9/x", "--no-progress"]
        else:
            argv = ["report", run, "--out", blocker / "report.html", *CORPUS_SETS]
    capsys.readouterr()
    assert _main(argv) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("auditor: error: ") and "Traceback" not in err[0], err
    assert any(w in err[0] for w in ("Not a directory", "File exists", "not_a_folder")), err


def test_read_only_output_folder(corpus, tmp_path):
    """The output folder is on a read-only mount (root bypasses permission bits, not a read-only mount; where
    no mount is allowed the folder is made immutable with chattr)."""
    data, _ = corpus
    out = tmp_path / "out"
    out.mkdir()
    how = None
    if subprocess.run(["mount", "--bind", str(out), str(out)], capture_output=True).returncode == 0:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(out)], capture_output=True).returncode == 0:
            how = "mount"
        else:
            _umount(out)
    if how is None and subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode == 0:
        how = "chattr"
    if how is None:
        pytest.skip("neither a read-only bind mount nor chattr +i is available here")
    try:
        proc = _cli_subprocess(["index", data, "--out", out / "run", "--workers", "0", *CORPUS_SETS])
        line = assert_clean_failure(proc, str(out / "run"))
        assert ("Read-only file system" if how == "mount" else "Operation not permitted") in line
        assert list(out.iterdir()) == []
    finally:
        if how == "mount":
            _umount(out)
        else:
            subprocess.run(["chattr", "-i", str(out)], capture_output=True)
