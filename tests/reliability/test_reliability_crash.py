"""Crash safety: ``kill -9`` of ``auditor index``, ``auditor dedup`` and ``auditor probe`` at every atomic write
(and, for index and probe, from outside at markers appearing), then a rerun: the outputs are byte-identical to an
uninterrupted run, no file under a final name is ever half-written, and no temporary file is left behind.

Two ways of killing:

* **at every write** (deterministic sweep): a forked child runs the stage's CLI with ``os.replace`` wrapped so
  that the process SIGKILLs itself just before its k-th rename, for every k (for probe: every other k) -- the
  temporary file is complete, the final name is not there yet: the worst moment for an atomic writer;
* **from outside** (the way a user or the OOM killer does it): ``python -m auditor ...`` in a subprocess,
  SIGKILLed by the test when a marker file appears or after a delay.

No output file is excluded from the byte comparison: every stage's outputs are deterministic.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from support.crash import assert_complete_files, leftovers, tree
from support.helpers import is_tmp, tree_digest  # noqa: F401
from support.reliability import CORPUS_SETS, build_webdataset, photo_items, real_photos, tar_add

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------
def count_renames(argv: list[str]) -> int:
    """Run the CLI in-process, counting os.replace calls (the number of atomic writes)."""
    from auditor.cli import main

    real, n = os.replace, [0]

    def counting(src, dst, *a, **kw):
        n[0] += 1
        return real(src, dst, *a, **kw)

    os.replace = counting
    try:
        assert main(argv) == 0
    finally:
        os.replace = real
    return n[0]


def processes_tagged(tag: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds ``AUDITOR_TEST_TAG=tag``."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if f"AUDITOR_TEST_TAG={tag}".encode() in (d / "environ").read_bytes().split(b"\0") and \
                    (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(d.name))
        except OSError:
            pass
    return found


def kill_at_rename(k: int, argv: list[str]) -> bool:
    """Fork; the child runs the CLI and SIGKILLs itself just before its k-th os.replace. True if it died so."""
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            from auditor.cli import main

            real, n = os.replace, [0]

            def dying(src, dst, *a, **kw):
                n[0] += 1
                if n[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(src, dst, *a, **kw)

            os.replace = dying
            code = 10 + int(main(argv) or 0)
        except BaseException:  # noqa: BLE001
            code = 99
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status):
        assert os.WEXITSTATUS(status) != 99, "the stage raised before reaching the kill point"
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _main(argv: list[str]) -> int:
    from auditor.cli import main

    return main(argv)


def sweep(ks, prepare, argv_for, out_of, ref_tree: dict[str, str], stale: list | None = None) -> list[int]:
    """For each k: a fresh copy of the pre-stage state, killed before its k-th write, checked, rerun, compared.
    Returns the ks at which the child really died. Temporary files left after the rerun fail the sweep, or are
    collected into ``stale`` when given."""
    killed = []
    for k in ks:
        run = prepare(k)
        argv = argv_for(run)
        if kill_at_rename(k, argv):
            killed.append(k)
        out = out_of(run)
        if out.exists():
            assert_complete_files(out)
        assert _main(argv) == 0, f"rerun after a kill at write {k} failed"
        got = tree(out)
        assert got == ref_tree, f"kill at write {k}: outputs differ after the rerun: " + str(
            sorted(set(got.items()) ^ set(ref_tree.items()))[:6])
        if stale is None:
            assert leftovers(out) == [], f"kill at write {k}: temporary files left behind: {leftovers(out)}"
        else:
            stale.extend(leftovers(out))
    return killed


# ------------------------------------------------------------------------------------------------------------
# index
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus_wds(tmp_path_factory, imagenet, kodak) -> Path:
    base = tmp_path_factory.mktemp("crash_wds")
    build_webdataset(base / "data", real_photos(imagenet, kodak), base)
    return base / "data"


def _index_argv(data: Path, run: Path, workers: int = 0) -> list[str]:
    return ["index", str(data), "--out", str(run), "--workers", str(workers), *CORPUS_SETS]


def test_index_killed_at_every_write_resumes_identically(corpus_wds, tmp_path):
    ref = tmp_path / "ref"
    n = count_renames(_index_argv(corpus_wds, ref))
    ref_tree = tree(ref / "index")
    assert n >= 10 and len(ref_tree) == n - 1  # index.json is written twice (start, end)

    def prepare(k):
        return tmp_path / f"k{k}"

    killed = sweep(range(1, n + 1), prepare, lambda run: _index_argv(corpus_wds, run),
                   lambda run: run / "index", ref_tree)
    assert killed == list(range(1, n + 1))


@pytest.mark.parametrize("done_shards", [0, 3, 8])
def test_index_killed_from_outside_resumes_identically(shared_data, tmp_path, done_shards):
    """A real `python -m auditor index` with 2 workers, SIGKILLed once it has started writing and completed
    ``done_shards`` of its 12 shards (progress points, not wall-clock delays: the kill lands mid-run on a fast
    machine too)."""
    src = sorted((shared_data / "photos" / "cifar10-test").rglob("*.jpg"))[:1200]
    data = tmp_path / "cifar"
    for f in src:
        dst = data / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, dst)
        except OSError:
            shutil.copy(f, dst)
    sets = ["--set", "index.reader.folder_shard_size=100", "--set", "index.chunk_size=16"]
    ref = tmp_path / "ref"
    assert _main(_index_argv(data, ref, workers=0) + sets) == 0

    run = tmp_path / "run"
    tag = f"{os.getpid()}-{done_shards}-{time.time_ns()}"  # inherited by every process the run starts
    proc = subprocess.Popen([sys.executable, "-m", "auditor", *_index_argv(data, run, workers=2), *sets],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "AUDITOR_TEST_TAG": tag})
    deadline = time.time() + 120

    def reached() -> bool:
        if not (run / "index" / "index.json").exists():
            return False
        return len(list((run / "index" / "shards").glob("*.done"))) >= done_shards

    while time.time() < deadline and not reached() and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the index finished before it could be killed"
    # its pool workers, forkserver and resource tracker follow it instead of waiting forever
    deadline = time.time() + 15
    while time.time() < deadline and processes_tagged(tag):
        time.sleep(0.1)
    assert processes_tagged(tag) == []
    assert_complete_files(run / "index")
    assert _main(_index_argv(data, run, workers=2) + sets) == 0
    assert tree(run / "index") == tree(ref / "index")
    assert leftovers(run / "index") == []


# ------------------------------------------------------------------------------------------------------------
# dedup
# ------------------------------------------------------------------------------------------------------------
def _dedup_argv(run: Path) -> list[str]:
    return ["dedup", str(run), *CORPUS_SETS]


@pytest.fixture(scope="module")
def indexed(corpus_wds, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("crash_idx") / "run"
    assert _main(_index_argv(corpus_wds, run)) == 0
    return run


def test_dedup_killed_at_every_write_reruns_identically(indexed, tmp_path):
    ref = tmp_path / "ref"
    shutil.copytree(indexed, ref)
    n = count_renames(_dedup_argv(ref))
    ref_tree = tree(ref / "dedup")
    assert n >= 10 and len(ref_tree) == n

    def prepare(k):
        run = tmp_path / f"k{k}"
        shutil.copytree(indexed, run)
        return run

    killed = sweep(range(1, n + 1), prepare, _dedup_argv, lambda run: run / "dedup", ref_tree)
    assert killed == list(range(1, n + 1))


def test_dedup_rerun_after_kill_leaves_no_temporary_files(indexed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(indexed, run)
    assert kill_at_rename(1, _dedup_argv(run))
    assert leftovers(run / "dedup")  # the killed run's temporary file
    assert _main(_dedup_argv(run)) == 0
    assert leftovers(run / "dedup") == []


def _grow(data: Path, photos: list[Path]) -> None:
    """A new shard: two fresh photos and a re-encoded copy of a photo already in shard 00000."""
    import io
    import tarfile

    items = photo_items(photos, "p2_")
    first = sorted(data.glob("00000.tar"))[0]
    with tarfile.open(first) as tf:
        jpg = next(m for m in tf.getmembers() if m.name.startswith("p0_0000.jpg"))
        orig = tf.extractfile(jpg).read()
    buf = io.BytesIO()
    Image.open(io.BytesIO(orig)).convert("RGB").save(buf, "JPEG", quality=70)
    with tarfile.open(data / "00002.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        for it in items:
            tar_add(tf, f"{it['key']}.jpg", it["data"])
            tar_add(tf, f"{it['key']}.txt", it["caption"].encode())
        tar_add(tf, "p2_copy.jpg", buf.getvalue())
        tar_add(tf, "p2_copy.txt", b"a re-encoded copy")


def test_incremental_dedup_killed_at_every_write_reruns_identically(indexed, corpus_wds, tmp_path, imagenet):
    """The index gained a shard since the last dedup; the incremental dedup is killed at every write."""
    data = tmp_path / "data"
    shutil.copytree(corpus_wds, data)
    base = tmp_path / "base"
    shutil.copytree(indexed, base)
    assert _main(_dedup_argv(base)) == 0  # dedup state of the 2-shard index
    _grow(data, imagenet[20:22])
    # the index resumes on the grown dataset (same root recorded: copy the run with the new data path; a run
    # folder names its dataset, and another root is refused)
    info_path = base / "index" / "index.json"
    info = json.loads(info_path.read_text())
    info["dataset"]["root"] = str(data)
    info_path.write_text(json.dumps(info))
    assert _main(_index_argv(data, base)) == 0
    ref = tmp_path / "ref"
    shutil.copytree(base, ref)
    n = count_renames(_dedup_argv(ref))
    state = json.loads((ref / "dedup" / "state" / "state.json").read_text())
    assert state["last_run"]["mode"] == "incremental" and state["last_run"]["new_groups"] == 3
    man = pd.read_parquet(ref / "dedup" / "manifest.parquet").set_index("key")
    assert man.loc["p2_copy", "cluster_id"] == man.loc["p0_0000", "cluster_id"]  # the new shard was searched
    ref_tree = tree(ref / "dedup")

    def prepare(k):
        run = tmp_path / f"k{k}"
        shutil.copytree(base, run)
        return run

    killed = sweep(range(1, n + 1), prepare, _dedup_argv, lambda run: run / "dedup", ref_tree)
    assert killed == list(range(1, n + 1))


# ------------------------------------------------------------------------------------------------------------
# probe (the tiny diffusers pipeline of tests/support/tiny_pipeline.py on CPU)
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def probe_run(tmp_path_factory, kodak) -> tuple[Path, Path]:
    """(run folder with a real index + dedup of kodak photos and two re-encoded copies, tiny model folder)."""
    from support.tiny_pipeline import save_tiny_pipeline

    base = tmp_path_factory.mktemp("crash_probe")
    model = save_tiny_pipeline(base / "sd")
    data = base / "data"
    data.mkdir()
    caps = {}
    for i, p in enumerate(kodak[:6]):
        shutil.copy(p, data / p.name)
        caps[p.name] = f"caption number {i} of a kodak photo"
    Image.open(kodak[0]).convert("RGB").save(data / "copy0.jpg", quality=85)
    caps["copy0.jpg"] = caps[kodak[0].name]
    Image.open(kodak[1]).convert("RGB").save(data / "copy1.jpg", quality=85)
    caps["copy1.jpg"] = caps[kodak[1].name]
    pd.DataFrame({"key": list(caps), "caption": list(caps.values())}).to_csv(base / "caps.csv", index=False)
    run = base / "run"
    assert _main(["index", str(data), "--out", str(run), "--workers", "0",
                  "--set", f"index.reader.captions_file={base / 'caps.csv'}", *CORPUS_SETS]) == 0
    assert _main(_dedup_argv(run)) == 0
    assert len(pd.read_parquet(run / "dedup" / "risk.parquet")) == 2
    return run, model


def _probe_argv(run: Path, model: Path) -> list[str]:
    # whitebox_threshold -1: every caption is flagged, so the confirm tier writes generations too
    return ["probe", str(run), "--model", str(model), "--top-n", "2", "--no-progress",
            "--set", "probe.steps=2", "--set", "probe.whitebox_seeds=2", "--set", "probe.whitebox_threshold=-1",
            "--set", "probe.calibration_captions=2", "--set", "probe.confirm_generations=2",
            "--set", "probe.diffusers.device=cpu", "--set", "probe.diffusers.batch_size=2",
            # the sweep forks this process after its own in-process runs: the whole-index retrieval (the guard's
            # faiss + a second onnxruntime session) hung in the forked child (futex wait, 2026-12-03); retrieval
            # is covered by tests/test_probe_verdict_real.py
            "--set", "probe.retrieval=false"]


def _without_probe(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("probe"))
    return dst


def test_probe_killed_at_every_other_write_resumes_identically(probe_run, tmp_path):
    src, model = probe_run
    ref = _without_probe(src, tmp_path / "ref")
    n = count_renames(_probe_argv(ref, model))
    ref_tree = tree(ref / "probe")
    res = pd.read_parquet(ref / "probe" / "results.parquet")
    assert len(res) == 2 and (res["n_generations"] == 2).all()
    assert len(list((ref / "probe" / "generations").rglob("*.png"))) == 4
    assert n >= 12 and len(ref_tree) == n

    ks = list(range(1, n + 1, 2)) + ([n] if n % 2 == 0 else [])
    killed = sweep(ks, lambda k: _without_probe(src, tmp_path / f"k{k}"), lambda run: _probe_argv(run, model),
                   lambda run: run / "probe", ref_tree)
    assert killed == ks


def test_probe_killed_from_outside_resumes_identically(probe_run, tmp_path):
    """`python -m auditor probe` SIGKILLed when the first caption's screen marker appears."""
    src, model = probe_run
    ref = _without_probe(src, tmp_path / "ref")
    assert _main(_probe_argv(ref, model)) == 0
    run = _without_probe(src, tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-m", "auditor", *_probe_argv(run, model)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not list((run / "probe" / "screen").glob("*.json")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the probe finished before it could be killed"
    assert not (run / "probe" / "results.parquet").exists()
    assert_complete_files(run / "probe")
    assert _main(_probe_argv(run, model)) == 0
    assert tree(run / "probe") == tree(ref / "probe")
    assert leftovers(run / "probe") == []


def test_probe_batch_size_changes_only_float_rounding(probe_run, tmp_path):
    """``probe.diffusers.batch_size`` (the probe's parallel knob, left out of its resume fingerprint) gives the
    same rows, verdicts and seeds; batched CPU kernels round differently, so generated pixels may move by at
    most one grey level and white-box scores by float noise. At a fixed batch size the bytes are identical
    (the sweeps above)."""
    src, model = probe_run
    out = {}
    for bs in (1, 2):
        run = _without_probe(src, tmp_path / f"bs{bs}")
        argv = [a if a != "probe.diffusers.batch_size=2" else f"probe.diffusers.batch_size={bs}"
                for a in _probe_argv(run, model)]
        assert _main(argv) == 0
        out[bs] = run
    a, b = (pd.read_parquet(out[bs] / "probe" / "results.parquet") for bs in (1, 2))
    exact = ["caption", "variant", "prompt", "rank", "cluster_id", "n_generations", "unet_evals", "tier",
             "whitebox_flag", "screen_flag", "verdict", "error"]
    pd.testing.assert_frame_equal(a[exact], b[exact])
    np.testing.assert_allclose(a["whitebox_score"], b["whitebox_score"], rtol=1e-4)
    pngs = sorted(p.relative_to(out[1]) for p in (out[1] / "probe" / "generations").rglob("*.png"))
    assert len(pngs) == 4 and pngs == sorted(p.relative_to(out[2]) for p in (out[2] / "probe" / "generations").rglob("*.png"))
    for p in pngs:
        x = np.asarray(Image.open(out[1] / p), dtype=np.int16)
        y = np.asarray(Image.open(out[2] / p), dtype=np.int16)
        assert np.abs(x - y).max() <= 1, p
