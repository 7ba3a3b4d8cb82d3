"""CPU cost of the shipped copy descriptor (``--embedder copy``), against peers measured in the same run.

On real photos (imagenet-256 by default), decoded once:
(a) the descriptor alone: onnxruntime, batch 64, preprocessed input, ``intra_op_num_threads`` 1 and 2;
(b) its preprocessing (``ResizeNormalize(64)``: bilinear squash + normalise) per image, one process;
(c) the peer: imagehash ``phash`` + ``dhash`` per image, one process (what auditor's hashes equal bit for bit);
(d) end to end: ``run_index`` on the folder with ``embedder none`` and ``embedder copy``, 2 workers.

    python benchmarks/bench_descriptor.py [--photos ../shared/data/photos/imagenet-256] [--repeat 3]

Writes benchmarks/results/descriptor.{json,md}. Host noise hits every peer alike (interleaved repeats, best of).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model  # noqa: E402


def ort_session(path: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def bench_descriptor(sess, x: np.ndarray, bs: int = 64) -> float:
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x[:bs]})  # warm-up
    t = time.perf_counter()
    for i in range(0, len(x), bs):
        sess.run(None, {name: x[i:i + bs]})
    return time.perf_counter() - t


def bench_preprocess(ims, pre) -> float:
    t = time.perf_counter()
    for im in ims:
        pre(im)
    return time.perf_counter() - t


def bench_imagehash(ims) -> float:
    import imagehash

    t = time.perf_counter()
    for im in ims:
        imagehash.phash(im)
        imagehash.dhash(im)
    return time.perf_counter() - t


def bench_index(folder: str, embedder: str) -> float:
    from auditor.config import AuditorConfig
    from auditor.index.runner import run_index

    cfg = AuditorConfig.model_validate({"index": {"workers": 2, "progress": False, "embedder": {"name": embedder}}})
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run_index(folder, str(Path(tmp) / "run"), cfg)
        return time.perf_counter() - t


def main() -> None:
    from PIL import Image

    from auditor.index.embedders.copy import CopyEmbedder, shipped_file

    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos" / "imagenet-256"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-index", action="store_true", help="skip the end-to-end index runs")
    a = ap.parse_args()
    files = sorted(p for p in Path(a.photos).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    ims = [Image.open(f).convert("RGB") for f in files]
    pre = CopyEmbedder.build_preprocess(None)
    x = np.stack([pre(im) for im in ims]).astype(np.float32)
    x = np.concatenate([x] * max(1, 4096 // len(x)))  # >= 4,096 descriptor inputs
    sessions = {t: ort_session(shipped_file(), t) for t in (1, 2)}
    runs: dict[str, list[float]] = {k: [] for k in ("descriptor_ort_1thread", "descriptor_ort_2threads",
                                                    "preprocess_1process", "imagehash_phash_dhash_1process")}
    if not a.no_index:
        runs.update({"index_embedder_none_2workers": [], "index_embedder_copy_2workers": []})
        bench_index(a.photos, "none")  # warm page cache and the pool's imports
    for _ in range(a.repeat):
        runs["descriptor_ort_1thread"].append(bench_descriptor(sessions[1], x))
        runs["descriptor_ort_2threads"].append(bench_descriptor(sessions[2], x))
        runs["preprocess_1process"].append(bench_preprocess(ims, pre))
        runs["imagehash_phash_dhash_1process"].append(bench_imagehash(ims))
        if not a.no_index:
            runs["index_embedder_none_2workers"].append(bench_index(a.photos, "none"))
            runs["index_embedder_copy_2workers"].append(bench_index(a.photos, "copy"))
    n = {k: (len(x) if k.startswith("descriptor") else len(ims)) for k in runs}
    ips = {k: n[k] / min(v) for k, v in runs.items()}
    peer = ips["imagehash_phash_dhash_1process"]
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    out = {"date": date.today().isoformat(), "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python "
           f"{platform.python_version()}", "load_average_at_end": load, "photos": len(ims), "best_of": a.repeat,
           "batch": 64, "onnx": os.path.relpath(shipped_file(), REPO), "onnx_bytes": os.path.getsize(shipped_file()),
           "images_per_s": ips, "ms_per_image": {k: 1e3 / v for k, v in ips.items()},
           "ratio_vs_imagehash": {k: v / peer for k, v in ips.items()}, "seconds_every_run": runs}
    rdir = REPO / "benchmarks" / "results"
    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / "descriptor.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"Copy descriptor CPU cost, {out['machine']}, {out['date']}, best of {a.repeat}, "
             f"load average at end {load}", "",
             "| what | img/s | ms/img | vs imagehash phash+dhash |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v:.0f} | {1e3 / v:.3f} | {out['ratio_vs_imagehash'][k]:.2f}x |" for k, v in ips.items()]
    (rdir / "descriptor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
