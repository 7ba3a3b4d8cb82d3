"""Build real img2dataset shards from local image files, offline.

:func:`serve_and_download` serves the files over HTTP on 127.0.0.1 (``python -m http.server`` in a
subprocess), writes a url/caption parquet and runs the real ``img2dataset`` command line against it. The lab,
the demo and the tests use it to get exactly the layout a LAION-style pipeline produces (keys, sidecar
parquet, stats files, failed rows) without the internet.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.parquet as pq

from .base import IMAGE_EXTS

log = logging.getLogger(__name__)

Item = tuple[Union[str, os.PathLike], Optional[str]]
OUTPUT_FORMATS = ("webdataset", "parquet", "files")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def start_http_server(directory: Union[str, os.PathLike], attempts: int = 5) -> tuple[subprocess.Popen, int]:
    """Start ``python -m http.server`` bound to 127.0.0.1 on a free port serving ``directory``;
    returns (process, port). The caller stops it with :func:`stop_process`."""
    last = ""
    for _ in range(attempts):
        port = _free_port()
        # the server logs every request to stderr: send it to a file, never to a pipe nobody drains
        with tempfile.TemporaryFile() as errlog:
            proc = subprocess.Popen(
                [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
                 "--directory", str(directory)],
                stdout=subprocess.DEVNULL, stderr=errlog)
            if _wait_listening(port, proc):
                return proc, port
            stop_process(proc)
            errlog.seek(0)
            last = errlog.read().decode(errors="replace")[-500:]
    raise RuntimeError(f"could not start a local HTTP server: {last}")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop exactly the process we started (by its PID), politely then firmly."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def img2dataset_command() -> list[str]:
    """The img2dataset CLI of this interpreter's environment: the console script next to ``sys.executable``,
    else the package's ``main`` through this interpreter."""
    script = Path(sys.executable).parent / ("img2dataset.exe" if os.name == "nt" else "img2dataset")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from img2dataset.main import main; sys.exit(main())"]


def _collect(items: Union[str, os.PathLike, Iterable[Item]]) -> list[tuple[Path, Optional[str]]]:
    if isinstance(items, (str, os.PathLike)):
        root = Path(items).expanduser().absolute()
        out = []
        for p in sorted(q for q in root.rglob("*") if q.is_file() and q.suffix.lower().lstrip(".") in IMAGE_EXTS):
            side = p.with_suffix(".txt")
            out.append((p, side.read_text(encoding="utf-8", errors="replace") if side.exists() else p.stem))
        return out
    return [(Path(p).expanduser().absolute(), c) for p, c in items]


def serve_and_download(
    items: Union[str, os.PathLike, Sequence[Item]],
    out_dir: Union[str, os.PathLike],
    output_format: str = "webdataset",
    image_size: Optional[int] = None,
    resize_mode: str = "no",
    processes: int = 1,
    thread_count: int = 4,
    number_sample_per_shard: int = 10_000,
    missing: int = 0,
    encode_format: str = "jpg",
    extra_args: Sequence[str] = (),
    timeout: float = 600.0,
) -> Path:
    """Serve local images on 127.0.0.1 and download them with the real img2dataset CLI into ``out_dir``.

    ``items`` is a list of ``(image_path, caption)`` or a folder (every image below it, captioned by a
    sidecar ``.txt`` or else its file stem). Each image is served as ``/<row:06d>_<file name>``, in item
    order, so img2dataset row ``i`` (its key is the shard number followed by ``i`` within the shard) is item
    ``i``; an item whose file does not exist is listed but not served, so its URL answers 404 and img2dataset
    records a failed row. ``missing`` appends that many such rows (captions ``"missing <n>"``).
    ``image_size=None`` keeps the stored bytes as served (``disable_all_reencoding``: PNG/WebP files are
    then stored under the ``.jpg`` extension, as img2dataset does). The input parquet also carries a
    ``source`` column (the original file path), saved in the outputs with ``save_additional_columns``.
    Returns ``out_dir`` as an absolute path (a relative one is taken from the current folder); it must not exist
    yet or be empty.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    # absolute: img2dataset runs with its working folder in a temporary directory, where a relative
    # --output_folder would land (and be deleted with it)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; img2dataset would skip or mix shards")
    entries = _collect(items)
    entries += [(Path(f"/nonexistent/missing_{i}.jpg"), f"missing {i}") for i in range(missing)]
    if not entries:
        raise ValueError("nothing to download")
    with tempfile.TemporaryDirectory(prefix="auditor-serve-") as tmp:
        serve = Path(tmp) / "www"
        serve.mkdir()
        names = []
        for i, (src, _cap) in enumerate(entries):
            name = f"{i:06d}_{src.name}"
            names.append(name)
            if src.is_file():
                dst = serve / name
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copyfile(src, dst)
        proc, port = start_http_server(serve)
        try:
            urls = [f"http://127.0.0.1:{port}/{urllib.parse.quote(n)}" for n in names]
            table = pa.table({
                "url": pa.array(urls, pa.string()),
                "caption": pa.array([c for _, c in entries], pa.string()),
                "source": pa.array([str(p) for p, _ in entries], pa.string()),
            })
            url_list = Path(tmp) / "urls.parquet"
            pq.write_table(table, url_list)
            cmd = img2dataset_command() + [
                "--url_list", str(url_list),
                "--input_format", "parquet",
                "--url_col", "url",
                "--caption_col", "caption",
                "--save_additional_columns", "[source]",
                "--output_format", output_format,
                "--output_folder", str(out),
                "--processes_count", str(processes),
                "--thread_count", str(thread_count),
                "--number_sample_per_shard", str(number_sample_per_shard),
                "--encode_format", encode_format,
                "--image_size", str(image_size or 256),
                "--resize_mode", resize_mode,
                "--disable_all_reencoding", str(image_size is None),
                "--enable_wandb", "False",
                "--distributor", "multiprocessing",
                "--retries", "0",
                "--timeout", "10",
                *extra_args,
            ]
            env = dict(os.environ)
            env.update({"NO_ALBUMENTATIONS_UPDATE": "1", "no_proxy": "127.0.0.1,localhost",
                        "NO_PROXY": "127.0.0.1,localhost"})
            log.info("running %s", " ".join(cmd))
            res = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=timeout)
            if res.returncode != 0:
                raise RuntimeError(f"img2dataset failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
        finally:
            stop_process(proc)
    return out
