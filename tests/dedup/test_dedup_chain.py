"""Clusters that keep true copies linked only through other copies, without merging unrelated photos or a drift.

The built case of issue 14: a 32-px photo copied 200 times with 1-2 px crops, a slight brightness change and a
JPEG re-save (LANCZOS-free: Pillow BICUBIC back to 32 px, as a thumbnailer does), among 4,000 unrelated 32-px
CIFAR-10 test photos. A crop sits up to 20 pHash bits from the representative -- beyond the 10-bit threshold,
where unrelated small photos already have their nearest neighbour (10-16 bits) -- and is linked to the group only
through other copies, which the star rule split off.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from auditor.dedup.runner import run_dedup
from support.dedup import config, index, write_dataset

N_COPIES = 200
N_UNRELATED = 4000


def _crop_copy(img: Image.Image, rng: random.Random) -> bytes:
    w, h = img.size
    l, t, r, b = (rng.randint(0, 2) for _ in range(4))
    if l + t + r + b == 0:
        l = 1
    out = img.crop((l, t, w - r, h - b)).resize((w, h), Image.Resampling.BICUBIC)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.97, 1.03))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=rng.randint(75, 95))
    return buf.getvalue()


@pytest.fixture(scope="module")
def small_photo_run(tmp_path_factory, shared_data):
    files = sorted((shared_data / "photos" / "cifar10-test").glob("*/*.jpg"))
    if len(files) < N_UNRELATED + 1:
        pytest.skip(f"needs {N_UNRELATED + 1} CIFAR-10 test photos, found {len(files)}")
    rng = random.Random(0)
    rng.shuffle(files)
    src = Image.open(files[0]).convert("RGB")
    buf = io.BytesIO()
    src.save(buf, format="JPEG", quality=95)
    samples = [{"key": "copy_000", "data": buf.getvalue(), "caption": "the photo"}]
    samples += [{"key": f"copy_{k:03d}", "data": _crop_copy(src, rng), "caption": "the photo"}
                for k in range(1, N_COPIES)]
    samples += [{"key": f"other_{k:04d}", "data": f.read_bytes(), "caption": f.parent.name}
                for k, f in enumerate(files[1:N_UNRELATED + 1])]
    random.Random(1).shuffle(samples)
    root = tmp_path_factory.mktemp("small")
    write_dataset(root / "data", samples, shard_size=1000)
    store = index(root / "data", root / "run", embeddings=False)
    return root / "run", store


def _manifest(run) -> pd.DataFrame:
    return pd.read_parquet(run / "dedup" / "manifest.parquet")


def test_crops_of_a_small_photo_are_one_group_and_nothing_unrelated_joins(small_photo_run):
    run, store = small_photo_run
    t = store.table(columns=["key", "phash"])
    copies = t.key.str.startswith("copy_")
    ph = t.phash.to_numpy(np.uint64)
    # the data really needs the chain: many copies are beyond the threshold from every choice of representative
    far = np.bitwise_count(ph[copies.to_numpy()][:, None] ^ ph[copies.to_numpy()][None, :]) > 10
    assert far.any(axis=1).all() and far.sum() > N_COPIES * 10

    run_dedup(run, config("dedup.chain_min_links=0"))  # the star rule
    star = _manifest(run)
    assert star[star.key.str.startswith("copy_")].cluster_id.nunique() > 1

    summary = run_dedup(run, config())
    m = _manifest(run)
    group = m[m.key.str.startswith("copy_")]
    assert group.cluster_id.nunique() == 1, group.cluster_id.value_counts().head()
    members = m[m.cluster_id == group.cluster_id.iloc[0]]
    assert len(members) == N_COPIES and members.key.str.startswith("copy_").all()
    assert summary["thresholds"]["chain_min_links"] > 0


def test_the_default_index_with_the_copy_descriptor_keeps_the_small_photo_group_whole(small_photo_run):
    """The same folder as a user runs it: `auditor index DIR --out RUN && auditor dedup RUN`, no flags, so the
    shipped copy descriptor and its calibrated cosine threshold are on."""
    run, _ = small_photo_run
    data = run.parent / "data"
    run_copy = run.parent / "run_copy"
    store = index(data, run_copy, embeddings=False, embedder="copy")
    assert store.embedder["name"] == "copy" and store.embeddings().shape[1] == 128
    summary = run_dedup(run_copy, config())
    from auditor.index.embedders import COPY_COSINE_THRESHOLD

    assert summary["thresholds"]["cosine_threshold"] == COPY_COSINE_THRESHOLD
    m = _manifest(run_copy)
    group = m[m.key.str.startswith("copy_")]
    assert group.cluster_id.nunique() == 1, group.cluster_id.value_counts().head()
    members = m[m.cluster_id == group.cluster_id.iloc[0]]
    assert len(members) == N_COPIES and members.key.str.startswith("copy_").all()
