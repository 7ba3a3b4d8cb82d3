"""Hash-only index throughput on real photos against its limit and its peers, measured in the same run (issue 18).

Folders: the shared imagenet-256 JPEGs + Kodak PNGs (1,024 real photos), repeated under new names in a temporary
folder up to each size (``--sizes``, default 1,000 and 10,000 files). Every auditor run here is hash-only
(``index.embedder.name=none``): the hashing comparison, not the embedder's.

1. **In-process, per folder** (peers interleaved, ``--repeat`` rounds, medians):
   - ``decode-only, exact`` / ``decode-only, fast``: the index's own decoder (``decode_for_index``; ``decode_reduced``
     for fast mode) on the same files, in the index's own process pool (``make_pool``) with the same worker count
     and chunk size, doing nothing else: the parallel limit of an indexer that must decode;
   - ``auditor exact`` / ``auditor fast``: a whole ``run_index`` (pool start, reading, hashing, writing the index);
     ``auditor exact, workers=0`` (one process) as the check of ``workers``' default;
   - imagededup ``PHash().encode_images`` (its default multiprocessing) and, on folders of <= 1,000 files, imagehash's
     ``phash`` + ``dhash`` per file in one process (the bit-for-bit reference).
2. **Whole process** (``--cli-files`` files, default 3,000 = imagenet-256 under 3 names, as issue 18 measured):
   ``auditor index DIR --out RUN`` as a command vs imagededup's ``encode_images`` in a fresh ``python -c``, import
   time included, hyperfine-style: ``--cli-repeat`` interleaved rounds, median wall time. The environment has no
   ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` (a user's shell); one extra auditor line sets
   ``OMP_NUM_THREADS=1`` to show the workers' own thread cap leaves nothing to gain from it.
3. **Fast mode's bits**: pHash/dHash Hamming distance to imagehash's on the 1,024 distinct photos (mean, p99, max),
   exact mode alongside (0 by construction).

    python benchmarks/bench_index.py [--shared-data ../shared/data] [--repeat 5] [--cli-repeat 7]

imagededup is installed for the benchmark only (``pip install imagededup``). Writes
benchmarks/results/index.{json,md}. The dedup accuracy of the two modes is ``bench_dedup_accuracy.py --set
index.hash_mode=...`` (BENCHMARKS.md section 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model  # noqa: E402

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
for _v in THREAD_VARS:  # measured as users run it: no thread variables (the index must cap its own threads)
    os.environ.pop(_v, None)

CHUNK = 64
WORKERS = 2


def machine() -> str:
    return f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores usable, Python {platform.python_version()}"


def photo_pool(shared: Path) -> list[Path]:
    jp = sorted((shared / "photos" / "imagenet-256").glob("*.jpg"))
    return jp + sorted((shared / "photos" / "kodak").glob("*.png"))


def make_folder(root: Path, pool: list[Path], n: int, name: str) -> Path:
    """``n`` files: the pool's photos in order, cycled, each copy under a new name (hard links: same bytes)."""
    d = root / name
    d.mkdir()
    for i in range(n):
        src = pool[i % len(pool)]
        dst = d / f"{i // len(pool)}_{src.name}"
        try:
            os.link(src, dst)
        except OSError:
            dst.write_bytes(src.read_bytes())
    return d


def decode_only(folder: Path, mode: str, workers: int = WORKERS) -> float:
    """The index's decoder alone over the index's own pool (same worker count, same chunks), files read by the
    workers as the index's are."""
    from auditor.index.engines.local import make_pool
    from index_peers import decode_files

    files = sorted(str(p) for p in folder.iterdir())
    t = time.perf_counter()
    pool = make_pool(workers)
    try:
        futs = [pool.submit(decode_files, files[i:i + CHUNK], mode) for i in range(0, len(files), CHUNK)]
        n = sum(f.result() for f in futs)
    finally:
        pool.shutdown(wait=True)
    dt = time.perf_counter() - t
    assert n == len(files), (n, len(files))
    return dt


def auditor_run(folder: Path, workers: int, mode: str) -> float:
    from auditor.index.config import IndexConfig
    from auditor.index.runner import run_index

    cfg = IndexConfig.model_validate({"workers": workers, "progress": False, "hash_mode": mode,
                                      "embedder": {"name": "none"}})
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        store = run_index(str(folder), Path(tmp) / "run", cfg)
        dt = time.perf_counter() - t
        assert store.info["counts"]["indexed"] == len(list(folder.iterdir())), store.info["counts"]
    return dt


def imagededup_run(folder: Path) -> float:
    from imagededup.methods import PHash

    hasher = PHash(verbose=False)
    t = time.perf_counter()
    hasher.encode_images(image_dir=str(folder))
    return time.perf_counter() - t


def imagehash_run(folder: Path) -> float:
    import imagehash
    from PIL import Image

    t = time.perf_counter()
    for f in sorted(folder.iterdir()):
        with Image.open(f) as im:
            imagehash.phash(im)
            imagehash.dhash(im)
    return time.perf_counter() - t


def in_process(folders: dict[int, Path], repeat: int) -> dict:
    peers = {
        "decode-only, exact (index decoder, index pool, 2 workers)": lambda f: decode_only(f, "exact"),
        "auditor exact, workers=2": lambda f: auditor_run(f, WORKERS, "exact"),
        "decode-only, fast (reduced-scale decoder, index pool, 2 workers)": lambda f: decode_only(f, "fast"),
        "auditor fast, workers=2": lambda f: auditor_run(f, WORKERS, "fast"),
        "auditor exact, workers=0 (1 process)": lambda f: auditor_run(f, 0, "exact"),
        "imagededup PHash().encode_images": imagededup_run,
        "imagehash phash + dhash, 1 process": imagehash_run,
    }
    auditor_run(folders[min(folders)], WORKERS, "exact")  # starts the local engine's forkserver once (its imports)
    times: dict[int, dict[str, list[float]]] = {n: {k: [] for k in peers} for n in folders}
    for r in range(repeat):  # rounds interleave every peer, so the other jobs' load hits each alike
        for n, folder in folders.items():
            for name, fn in peers.items():
                if name.startswith("imagehash") and n > 1000:
                    continue
                times[n][name].append(fn(folder))
        print(f"in-process round {r + 1}/{repeat} done", flush=True)
    out = {}
    for n, tt in times.items():
        med = {k: statistics.median(v) for k, v in tt.items() if v}
        ips = {k: n / v for k, v in med.items()}
        dec_x, dec_f = (ips[k] for k in list(peers)[0:3:2])
        idd = ips["imagededup PHash().encode_images"]
        out[str(n)] = {"files": n, "median_s": med, "every_run_s": tt, "images_per_s": ips,
                       "exact_vs_decode_only": ips["auditor exact, workers=2"] / dec_x,
                       "fast_vs_decode_only_fast": ips["auditor fast, workers=2"] / dec_f,
                       "vs_imagededup": {k: v / idd for k, v in ips.items()}}
    return out


def whole_process(folder: Path, repeat: int) -> dict:
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    out_dir = Path(tempfile.mkdtemp(prefix="bench_index_cli_"))
    base = [py, "-m", "auditor.cli", "index", str(folder), "--out", str(out_dir / "run"),
            "--set", "index.embedder.name=none", "--set", "index.progress=false"]
    cmds = {
        "auditor index (exact)": (base, env),
        "auditor index --set index.hash_mode=fast": (base + ["--set", "index.hash_mode=fast"], env),
        "imagededup PHash().encode_images, fresh python": (
            [py, "-c", f"from imagededup.methods import PHash; PHash(verbose=False).encode_images(image_dir={str(folder)!r})"],
            env),
        "auditor index (exact), OMP_NUM_THREADS=1": (base, {**env, "OMP_NUM_THREADS": "1"}),
        "auditor index (exact), index.workers=0": (base + ["--set", "index.workers=0"], env),
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for r in range(repeat):
        for name, (cmd, e) in cmds.items():
            subprocess.run(["rm", "-rf", str(out_dir / "run")], check=True)
            t = time.perf_counter()
            p = subprocess.run(cmd, env=e, capture_output=True, text=True)
            dt = time.perf_counter() - t
            if p.returncode:
                raise RuntimeError(f"{name} failed: {p.stderr[-2000:]}")
            times[name].append(dt)
        print(f"whole-process round {r + 1}/{repeat} done", flush=True)
    subprocess.run(["rm", "-rf", str(out_dir)], check=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    idd = med["imagededup PHash().encode_images, fresh python"]
    n = len(list(folder.iterdir()))
    return {"files": n, "median_s": med, "every_run_s": times, "images_per_s": {k: n / v for k, v in med.items()},
            "speed_vs_imagededup": {k: idd / v for k, v in med.items()}}


def hash_bits(pool: list[Path]) -> dict:
    """Hamming distance of auditor's pHash/dHash (exact and fast mode) to imagehash's, per distinct photo."""
    import imagehash
    import numpy as np
    from PIL import Image

    from auditor.index.decode import decode_for_index
    from auditor.index.decode_fast import decode_reduced, fast_min_side
    from auditor.index.dihedral import hash_columns
    from auditor.index.hashing import gray_thumbnails

    def as_int(h) -> int:
        return int("".join("1" if b else "0" for b in h.hash.flatten()), 2)

    ref = {"phash": [], "dhash": []}
    for f in pool:
        with Image.open(f) as im:
            ref["phash"].append(as_int(imagehash.phash(im)))
            ref["dhash"].append(as_int(imagehash.dhash(im)))
    datas = [f.read_bytes() for f in pool]
    jpeg = np.array([f.suffix.lower() == ".jpg" for f in pool])
    out = {"photos": len(pool), "jpegs": int(jpeg.sum())}
    for mode, dec in (("exact", decode_for_index), ("fast", lambda d: decode_reduced(d, fast_min_side()))):
        cols = hash_columns([gray_thumbnails(dec(d).gray) for d in datas])
        for k in ("phash", "dhash"):
            x = np.asarray(cols[k], dtype=np.uint64) ^ np.asarray(ref[k], dtype=np.uint64)
            d = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(1)[jpeg]
            out[f"{mode} {k}"] = {"mean": float(d.mean()), "p99": float(np.percentile(d, 99)), "max": int(d.max()),
                                  "identical": float((d == 0).mean())}
    return out


def stage_costs(files: list[Path]) -> dict[str, float]:
    """Milliseconds per image of each step of auditor's per-sample work, one process, same files."""
    import hashlib

    import numpy as np
    from PIL import Image

    from auditor.index import hashing
    from auditor.index.decode import decode_for_index, open_image, to_rgb
    from auditor.index.hashing import bytes_sha256, gray_thumbnails, hash_thumbnails, phash_batch_gray

    datas = [f.read_bytes() for f in files]
    out: dict[str, float] = {}

    def timed(name, fn, xs):
        t = time.perf_counter()
        r = [fn(x) for x in xs]
        out[name] = (time.perf_counter() - t) * 1e3 / len(xs)
        return r

    def pillow_decode(data: bytes):
        im = open_image(data)
        return im, to_rgb(im)

    ims = timed("decode with Pillow (open_image + to_rgb)", pillow_decode, datas)
    decs = timed("decode, auditor (decode_for_index: libjpeg-turbo via simplejpeg + gray image)", decode_for_index,
                 datas)
    from auditor.index.decode_fast import decode_reduced, fast_min_side

    fast = timed("decode, fast mode (decode_reduced: the smallest M/8 scale with both sides >= 64)",
                 lambda d: decode_reduced(d, fast_min_side()), datas)
    timed("thumbnails of the fast mode's reduced images", lambda d: gray_thumbnails(d.gray), fast)
    timed("SHA-256 of the stored bytes", bytes_sha256, datas)
    timed("SHA-256 of the decoded RGB pixels (index format 1)", lambda d: hashlib.sha256(d.rgb).hexdigest(), decs)
    timed("BLAKE3 of the decoded RGB pixels (pixel_hash_array)", lambda d: hashing.pixel_hash_array(d.rgb), decs)
    lz = Image.Resampling.LANCZOS
    timed("thumbnails with Pillow (convert L + 2 LANCZOS resizes)",
          lambda p: (p[0].convert("L").resize((32, 32), lz), p[0].convert("L").resize((9, 8), lz)), ims)
    th = timed("thumbnails, auditor (exact fixed-point matrix products)", lambda d: gray_thumbnails(d.gray), decs)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(th, map(hash_thumbnails, (p[0] for p in ims[:50]))))
    g = np.stack([t[0] for t in th])
    t = time.perf_counter()
    phash_batch_gray(g)
    out["pHash DCT, batched"] = (time.perf_counter() - t) * 1e3 / len(g)
    sides = sorted({n for d in decs for n in (d.width, d.height)})
    hashing._band_blocks.cache_clear()
    hashing._resample_coeffs.cache_clear()
    t = time.perf_counter()
    for n in sides:
        for o in (hashing.PHASH_SIZE, hashing.HASH_SIZE + 1, hashing.HASH_SIZE):
            hashing._band_blocks(n, o)
    out[f"LANCZOS weight tables of one new image side, 3 sizes (this folder has {len(sides)} sides)"] = \
        (time.perf_counter() - t) * 1e3 / len(sides)
    return out


def render(res: dict) -> str:
    L = [f"Hash-only index (`index.embedder.name=none`), real photos, {res['machine']}, {res['date']}; medians of "
         f"{res['repeat']} interleaved rounds (other jobs shared the cores: see BENCHMARKS.md).", ""]
    for n, st in res["in_process"].items():
        L += [f"In-process, {n} files:", "", "| what | img/s | vs imagededup |", "|---|---:|---:|"]
        L += [f"| {k} | {v:,.0f} | {st['vs_imagededup'][k]:.2f}x |" for k, v in st["images_per_s"].items()]
        L += ["", f"exact / decode-only exact: **{st['exact_vs_decode_only']:.2f}x**; fast / decode-only fast: "
                  f"**{st['fast_vs_decode_only_fast']:.2f}x**", ""]
    wp = res.get("whole_process") or {"files": 0, "median_s": {}}
    L += [f"Whole process, {wp['files']} files, median of {res['cli_repeat']} (wall s, import time included):", "",
          "| command | s | img/s | vs imagededup |", "|---|---:|---:|---:|"]
    L += [f"| {k} | {wp['median_s'][k]:.2f} | {wp['images_per_s'][k]:,.0f} | {wp['speed_vs_imagededup'][k]:.2f}x |"
          for k in wp["median_s"]]
    hb = res.get("hash_bits") or {"jpegs": 0}
    L += ["", f"Hamming distance to imagehash on {hb['jpegs']} distinct JPEGs:", "",
          "| hash | mean | p99 | max | identical |", "|---|---:|---:|---:|---:|"]
    L += [f"| {k} | {v['mean']:.3f} | {v['p99']:.0f} | {v['max']} | {v['identical']:.3f} |"
          for k, v in hb.items() if isinstance(v, dict)]
    if res.get("steps_ms"):
        L += ["", "Per-image steps, one process, best of 3 (ms/img):", "", "| step | ms |", "|---|---:|"]
        L += [f"| {k} | {v:.3f} |" for k, v in res["steps_ms"].items()]
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared-data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cli-files", type=int, default=3000)
    ap.add_argument("--cli-repeat", type=int, default=7)
    ap.add_argument("--steps", action="store_true", help="also time each per-image step, one process")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    shared = Path(args.shared_data)
    pool = photo_pool(shared)
    if len(pool) < 1000:
        sys.exit(f"need >= 1000 photos, found {len(pool)} under {shared}/photos")
    jpegs = [p for p in pool if p.suffix == ".jpg"]
    res = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "machine": machine(),
           "repeat": args.repeat, "cli_repeat": args.cli_repeat, "photos": len(pool)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every section: a run cut short by the host still leaves what it measured
        (out / "index.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / "index.md").write_text(render(res))

    res["in_process"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {n: make_folder(Path(tmp), pool, n, f"x{n}") for n in args.sizes}
        cli = make_folder(Path(tmp), jpegs, args.cli_files, "cli")  # imagenet-256 under 3 names, as issue 18
        for f in [*folders.values(), cli]:  # warm the page cache
            for p in f.iterdir():
                p.read_bytes()
        res["hash_bits"] = hash_bits(pool)
        if args.steps:
            runs = [stage_costs(jpegs) for _ in range(3)]  # best of: the caches build on the first
            res["steps_ms"] = {k: min(r[k] for r in runs) for k in runs[0]}
        sizes = sorted(folders)
        res["in_process"].update(in_process({sizes[0]: folders[sizes[0]]}, args.repeat))
        save()
        res["whole_process"] = whole_process(cli, args.cli_repeat)
        save()
        for n in sizes[1:]:
            res["in_process"].update(in_process({n: folders[n]}, args.repeat))
            save()
    print(render(res))

if __name__ == "__main__":
    main()
