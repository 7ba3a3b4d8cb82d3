"""End-to-end throughput of the GPU index path on one GPU, with its peers measured in the same run.

One prepared script for a lent H100/H200 (it also runs on CPU at a tiny size, to prove it works):

1. builds img2dataset-style webdataset shards of 256x256 JPEGs (centre crop, quality 95, img2dataset's defaults)
   from copies of ``../shared/data/photos`` (imagenet-256 + kodak, repeated to ``--n`` samples);
2. measures, on the same shards:

   * ``gpu_path``       auditor.index.gpu end to end: DataLoader workers read the tar shards -> batched
                        ``decode_jpeg(device="cuda")`` (nvJPEG) + resize/normalise on the GPU (prefetched on a side
                        stream) -> ViT-B-32 image tower in fp16 -> L2-normalised embeddings on the host;
   * ``gpu_decode_only`` the same without the model (the decode + resize ceiling);
   * ``model_only``     the fp16 image tower on random input (the model ceiling);
   * ``pil_decode``     peer: PIL full RGB decode of the same JPEGs in a process pool over all cores (no hashing);
   * ``auditor_index``  the plain auditor index (``engine=local``, PIL decode + hashes + open_clip CPU
                        preprocessing in ``workers`` processes, fp16 embedding on the GPU), on ``--auditor-n``;
   * ``auditor_index_gpu_decode`` the same with ``index.gpu_decode=true`` (workers hash, the GPU decodes and
                        resizes for the embedding), on ``--auditor-n``.

The model is ViT-B-32 with ``pretrained=None`` (random weights: throughput only). Target: ``gpu_path`` >= 15k img/s
on one H100/H200. Writes ``--out`` .json and .md (default benchmarks/results/gpu_index). Run::

    python benchmarks/bench_gpu_index.py                       # GPU: 100k images, batch 512, fp16
    python benchmarks/bench_gpu_index.py --n 64 --shard-size 32 --batch 16 --auditor-n 64 \\
        --out /tmp/gpu_index_cpu_smoke                          # CPU smoke test (numbers are not GPU figures)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402,F401
import torch.utils.data as tud  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def machine(device: str) -> dict:
    import torch

    from common import cpu_model

    info = {"cpu": cpu_model(), "cpu_cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return info


# ------------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------------
def build_shards(photos: list[Path], n: int, shard_size: int, out: Path, size: int = 256) -> list[Path]:
    """``n`` samples of ``size`` px centre-cropped JPEGs (q95) in img2dataset webdataset shards."""
    from PIL import Image

    from auditor.io.writers import WebDatasetWriter

    encoded = []
    for p in photos:
        with Image.open(p) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize(
                (size, size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=95)
            encoded.append((p.stem, buf.getvalue()))
    with WebDatasetWriter(out, shard_size=shard_size) as w:
        for i in range(n):
            stem, data = encoded[i % len(encoded)]
            w.write(f"{i:09d}", data, caption=f"a photo ({stem})", url=f"https://example.invalid/{i}.jpg")
    return sorted(out.glob("*.tar"))


def iter_jpegs(tar_path: Path):
    with tarfile.open(tar_path, "r") as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".jpg"):
                yield tf.extractfile(m).read()


class TarBatches(tud.IterableDataset):
    """IterableDataset: the tar shards split over DataLoader workers, yielding lists of JPEG bytes."""

    def __init__(self, shards: list[Path], batch: int):
        self.shards, self.batch = shards, batch

    def __iter__(self):
        wi = tud.get_worker_info()
        mine = self.shards if wi is None else self.shards[wi.id::wi.num_workers]
        buf = []
        for s in mine:
            for data in iter_jpegs(s):
                buf.append(data)
                if len(buf) == self.batch:
                    yield buf
                    buf = []
        if buf:
            yield buf


def _identity(x):
    return x


def tar_loader(shards: list[Path], batch: int, workers: int):
    return tud.DataLoader(TarBatches(shards, batch), batch_size=None, collate_fn=_identity, num_workers=workers,
                          prefetch_factor=4 if workers else None, persistent_workers=False)


# ------------------------------------------------------------------------------------------------------------
# the model (ViT-B-32, random weights)
# ------------------------------------------------------------------------------------------------------------
class BenchEmbedder:
    def __init__(self, model: str, device: str, precision: str):
        import open_clip

        from auditor.index.config import EmbedderConfig
        from auditor.index.embedders.base import OpenClipPreprocess
        from auditor.index.embedders.openclip import preprocess_cfg

        self.device, self.precision = device, precision
        self.model = open_clip.create_model(model, pretrained=None, precision=precision, device=device).eval()
        self.dim = int(open_clip.get_model_config(model)["embed_dim"])
        self._preprocess = OpenClipPreprocess(preprocess_cfg(EmbedderConfig(name="open_clip", model=model)))
        self.input_size = self._preprocess.cfg["size"][0]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------------------
def bench_model_only(emb: BenchEmbedder, batch: int, n: int) -> dict:
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[emb.precision]
    x = torch.randn(batch, 3, emb.input_size, emb.input_size, device=emb.device).to(dtype)
    with torch.inference_mode():
        emb.model.encode_image(x)
        _sync(emb.device)
        steps = max(1, n // batch)
        t = time.perf_counter()
        for _ in range(steps):
            emb.model.encode_image(x)
        _sync(emb.device)
        dt = time.perf_counter() - t
    return {"images": steps * batch, "seconds": round(dt, 3), "img_per_s": round(steps * batch / dt, 1)}


def bench_gpu_path(emb: BenchEmbedder, shards: list[Path], batch: int, loader_workers: int,
                   with_model: bool = True) -> dict:
    from auditor.index.gpu import GpuPath

    g = GpuPath.for_embedder(emb, prefetch=3)
    warm = list(iter_jpegs(shards[0]))[:batch]
    g.embed(warm) if with_model else g.prepare(warm)  # kernels, cuDNN/cuBLAS handles, nvJPEG state
    _sync(emb.device)
    g.stats = {k: 0 for k in g.stats}
    n = 0
    t = time.perf_counter()
    if with_model:
        for out, errs in g.stream(tar_loader(shards, batch, loader_workers)):
            n += len(out)
    else:
        for datas in tar_loader(shards, batch, loader_workers):
            x = g.prepare(datas)
            n += len(x)
        _sync(emb.device)
    dt = time.perf_counter() - t
    return {"images": n, "seconds": round(dt, 3), "img_per_s": round(n / dt, 1), "routes": dict(g.stats),
            "batch": batch, "loader_workers": loader_workers}


def _pil_decode_shard(path: str) -> int:
    from PIL import Image

    k = 0
    for data in iter_jpegs(Path(path)):
        with Image.open(io.BytesIO(data)) as im:
            im.convert("RGB").load()
        k += 1
    return k


def _noop(x):
    return x


def bench_pil(shards: list[Path], workers: int) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    with ctx.Pool(workers) as pool:
        pool.map(_noop, range(workers))  # start the workers outside the timing
        t = time.perf_counter()
        n = sum(pool.imap_unordered(_pil_decode_shard, [str(s) for s in shards]))
        dt = time.perf_counter() - t
    return {"images": n, "seconds": round(dt, 3), "img_per_s": round(n / dt, 1), "workers": workers}


def bench_auditor(data_dir: Path, model: str, device: str, precision: str, batch: int, workers: int,
                  gpu_decode: bool, tmp: Path) -> dict:
    import open_clip

    from auditor.config import AuditorConfig
    from auditor.index.runner import run_index

    js = tmp / f"bench-{model.lower()}.json"
    js.write_text(json.dumps(open_clip.get_model_config(model)), encoding="utf-8")  # random init, no download
    cfg = AuditorConfig.model_validate({"index": {
        "workers": workers, "progress": False, "gpu_decode": gpu_decode,
        "embedder": {"name": "open_clip", "model": str(js), "device": device, "precision": precision,
                     "batch_size": batch}}})
    out = tmp / ("run-gpu" if gpu_decode else "run")
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    store = run_index(data_dir, out, cfg)
    dt = time.perf_counter() - t
    n = store.info["counts"]["indexed"]
    return {"images": n, "seconds": round(dt, 3), "img_per_s": round(n / dt, 1), "workers": workers,
            "errors": store.info["counts"]["errors"], "includes": "model load, pool start-up, hashing, writing"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "photos")
    ap.add_argument("--n", type=int, default=100_000, help="samples in the shards")
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--auditor-n", type=int, default=40_000, help="samples for the two auditor index runs")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    ap.add_argument("--loader-workers", type=int, default=-1, help="DataLoader tar readers (-1: cores // 2)")
    ap.add_argument("--workers", type=int, default=-1, help="auditor index / PIL peer processes (-1: all cores)")
    ap.add_argument("--skip", nargs="*", default=[], help="measurements to skip")
    ap.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_index")
    args = ap.parse_args()

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision if args.precision != "auto" else ("fp16" if device.startswith("cuda") else "fp32")
    cores = len(os.sched_getaffinity(0))
    workers = cores if args.workers < 0 else args.workers
    loader_workers = max(1, cores // 2) if args.loader_workers < 0 else args.loader_workers
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    tmp = args.tmp or Path(tempfile.mkdtemp(prefix="bench_gpu_index_"))
    photos = sorted((args.photos / "imagenet-256").glob("*.jpg")) + sorted((args.photos / "kodak").glob("*.png"))
    if not photos:
        print(f"no photos under {args.photos}", file=sys.stderr)
        return 2
    res: dict = {"date": date.today().isoformat(), "machine": machine(device), "model": args.model,
                 "precision": precision, "n": args.n, "image_px": 256, "results": {}}
    t = time.perf_counter()
    shards = build_shards(photos, args.n, args.shard_size, tmp / "shards")
    res["build_s"] = round(time.perf_counter() - t, 1)
    mb = sum(s.stat().st_size for s in shards) / 2 ** 20
    res["shards"] = {"count": len(shards), "mib": round(mb, 1), "bytes_per_image": int(mb * 2 ** 20 / args.n)}
    print(f"built {len(shards)} shards ({mb:.0f} MiB) in {res['build_s']} s", flush=True)
    R = res["results"]

    def run(name, fn):
        if name in args.skip:
            return
        try:
            R[name] = fn()
        except Exception as e:  # noqa: BLE001 - report and keep the other figures
            R[name] = {"error": f"{type(e).__name__}: {e}"}
        print(name, json.dumps(R[name]), flush=True)

    emb = BenchEmbedder(args.model, device, precision)
    run("model_only", lambda: bench_model_only(emb, args.batch, min(args.n, 50 * args.batch)))
    run("gpu_decode_only", lambda: bench_gpu_path(emb, shards, args.batch, loader_workers, with_model=False))
    run("gpu_path", lambda: bench_gpu_path(emb, shards, args.batch, loader_workers))
    run("pil_decode", lambda: bench_pil(shards, workers))
    del emb
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    sub = tmp / "auditor_shards"
    k = max(1, -(-min(args.auditor_n, args.n) // args.shard_size))
    if not sub.exists():
        sub.mkdir()
        for s in shards[:k]:
            for f in (s, s.with_suffix(".parquet"), s.with_name(s.stem + "_stats.json")):
                if f.exists():
                    os.link(f, sub / f.name)
    run("auditor_index", lambda: bench_auditor(sub, args.model, device, precision, args.batch, workers, False, tmp))
    run("auditor_index_gpu_decode",
        lambda: bench_auditor(sub, args.model, device, precision, args.batch, workers, True, tmp))
    gp = R.get("gpu_path", {}).get("img_per_s")
    res["target_img_per_s"] = 15_000
    res["target_met"] = bool(gp and gp >= 15_000 and device.startswith("cuda"))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    m = res["machine"]
    lines = [f"# GPU index path throughput ({res['date']})", "",
             f"Device: **{m.get('gpu', 'CPU only')}** ({m['cpu']}, {m['cpu_cores']} cores); model {args.model} "
             f"{precision}, random weights; {args.n} JPEGs of 256x256 px in {len(shards)} webdataset shards "
             f"({res['shards']['bytes_per_image']} B/img).", "",
             "| measurement | images | seconds | img/s |", "|---|---:|---:|---:|"]
    for name, r in R.items():
        if "error" in r:
            lines.append(f"| {name} | | | error: {r['error']} |")
        else:
            lines.append(f"| {name} | {r['images']} | {r['seconds']} | {r['img_per_s']:,} |")
    verdict = ("met" if res["target_met"] else "not met") if device.startswith("cuda") else \
        "not applicable (CPU run: these are smoke-test numbers, not GPU figures)"
    lines += ["", f"Target gpu_path >= 15,000 img/s on one H100/H200: {verdict}.", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    if args.tmp is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
