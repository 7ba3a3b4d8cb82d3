"""Index engines: the registry, and the Ray Data engine on a local Ray cluster against the local engine on real
photos (with bad files among them): byte-identical index folders without an embedder and with a tiny open_clip
model, and resume after a lost shard."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from auditor.index.engines import ENGINES, build_engine
from auditor.index.runner import fingerprint, run_index
from support.helpers import index_config, tree_digest

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}




def test_registry_and_runtime_keys():
    assert ENGINES.names() == ["local", "ray"]
    assert type(build_engine(index_config(engine="ray").index)).__name__ == "RayEngine"
    # the engine and the cluster address do not change outputs: a run may resume under another engine
    assert fingerprint(index_config(engine="ray", ray_address="auto").index) == fingerprint(index_config().index)
    assert fingerprint(index_config(gpu_decode=True).index) != fingerprint(index_config().index)
    with pytest.raises(Exception, match="engine"):
        index_config(engine="spark")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, imagenet, kodak) -> Path:
    d = tmp_path_factory.mktemp("engines") / "photos"
    d.mkdir()
    for p in imagenet[:26]:
        shutil.copy(p, d / p.name)
    for p in kodak[:2]:
        shutil.copy(p, d / p.name)
    good = imagenet[0].read_bytes()
    (d / "n_truncated.jpg").write_bytes(good[: len(good) // 3])
    (d / "n_not_an_image.jpg").write_bytes(b"<html>404</html>")
    return d


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> dict:
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    d = tmp_path_factory.mktemp("clip")
    js = d / "auditor-engines-tiny.json"
    js.write_text(json.dumps(TINY), encoding="utf-8")
    open_clip.add_model_config(js)
    torch.manual_seed(0)
    model = open_clip.create_model("auditor-engines-tiny", pretrained=None)
    torch.save(model.state_dict(), d / "tiny.pt")
    # batch 5 over chunks of 3: embedding batches straddle chunks and the shard ends mid-batch
    return {"name": "open_clip", "model": str(js), "checkpoint": str(d / "tiny.pt"), "batch_size": 5,
            "device": "cpu", "precision": "fp32"}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("argv, expected", [
    (["photos/", "--out", "run"], True),
    (["photos/", "--out", "run", "--workers", "2"], True),
    (["photos/", "--out", "run", "--workers", "0"], False),
    (["photos/", "--out", "run", "--workers=0"], False),
    (["photos/", "--out", "run", "--set", "index.workers=0"], False),
    (["photos/", "--out", "run", "--engine", "ray"], False),
    (["photos/", "--out", "run", "--set", "index.engine=ray"], False),
    (["--help"], False),
])
def test_prestart_guesses_the_pool_from_the_arguments(argv, expected):
    """``auditor index`` starts the pool's forkserver before it imports the pipeline (cli.main -> prestart), from
    the arguments alone: not when they say the run is in-process, on Ray, or only asks for help."""
    from auditor.index.workerctx import guess_pool

    assert guess_pool(argv) is expected


def test_ray_engine_byte_identical_to_local(photos, tiny_clip, ray_cluster, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="auditor.index.engines.ray_engine")
    for name, emb in (("none", {"name": "none"}), ("clip", tiny_clip)):
        common = {"reader": {"folder_shard_size": 9}, "chunk_size": 3, "embedder": emb}
        local = run_index(photos, tmp_path / f"local-{name}", index_config(workers=0, **common))
        ray_store = run_index(photos, tmp_path / f"ray-{name}", index_config(engine="ray", **common))
        assert ray_cluster.is_initialized()  # an existing session is used and left running
        assert "ray engine: cluster with 2 CPUs, 0 GPUs" in caplog.text
        caplog.clear()
        assert local.info["counts"] == {"shards": 4, "indexed": 28, "errors": 2, "not_indexed": 0}
        assert set(local.errors()["key"]) == {"n_truncated.jpg", "n_not_an_image.jpg"}
        assert tree_digest(ray_store.dir) == tree_digest(local.dir), name
        if name == "clip":
            e = ray_store.embeddings()
            assert e.shape == (28, 16) and e.dtype.name == "float16" and abs(float((e[0].astype("f4") ** 2).sum()) - 1) < 1e-2

    # resume: a shard lost (marker and files) is redone by the ray engine, to the same bytes
    run = tmp_path / "ray-clip"
    for p in (run / "index" / "shards").glob("00002.*"):
        p.unlink()
    run_index(photos, run, index_config(engine="ray", reader={"folder_shard_size": 9}, chunk_size=4, embedder=tiny_clip))
    assert tree_digest(run / "index") == tree_digest(tmp_path / "local-clip" / "index")


# ------------------------------------------------------------------------------------------------------------
# dedup: on-disk partitioned search, local and on Ray
# ------------------------------------------------------------------------------------------------------------
def _clustered(n: int, d: int, seed: int = 0, ndup: int = 150):
    """Unit vectors in n // 50 clusters of varied spread, with ``ndup`` planted near-copies (cos 0.9..0.995)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    k = max(1, n // 50)
    centres = rng.standard_normal((k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.25, 1.5, size=k)  # tight clusters too: neighbours above tau that are not planted
    lab = rng.integers(0, k, size=n)
    x = centres[lab] + spread[lab, None] * rng.standard_normal((n, d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(n)
    dst, src = perm[:ndup], perm[ndup:2 * ndup]
    cos = rng.uniform(0.9, 0.995, size=ndup)
    g = rng.standard_normal((ndup, d))
    g -= (g * x[src]).sum(1, keepdims=True) * x[src]
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    x[dst] = x[src] + np.sqrt(1 / cos ** 2 - 1)[:, None] * g
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    planted = {(int(min(a, b)), int(max(a, b))) for a, b in zip(src, dst)}
    return x.astype(np.float16), planted


def test_partitioned_search_exact_and_identical_on_ray(tmp_path, ray_cluster):
    import numpy as np

    from auditor.dedup.partitioned import PartitionedIndex, build_partitions, partitioned_pairs

    emb, planted = _clustered(4000, 128)
    tau = 0.88
    x = emb.astype(np.float32)
    sim = x @ x.T
    bi, bj = np.nonzero(np.triu(sim >= np.float32(tau), k=1))
    truth = set(zip(bi.tolist(), bj.tolist()))
    assert planted <= truth and len(truth) > len(planted)  # cluster neighbours above tau too

    idx = build_partitions(emb, tmp_path / "parts", tau, nparts=12, seed=0, block_rows=1000, max_buffer_rows=3000)
    rows = idx.part_rows()
    assert sum(rows) == len(emb) and len(rows) == 12  # each row stored once ...
    assert 0 < sum(idx.probe_rows()) < len(emb)  # ... and probes the partitions across a nearby boundary
    assert all(p["chunks"] >= 2 for p in idx.manifest["partitions"] if p["rows"] > 500)  # buffers flushed
    i, j, s, stats = partitioned_pairs(PartitionedIndex.open(tmp_path / "parts"), tau)
    got = list(zip(i.tolist(), j.tolist()))
    assert len(got) == len(set(got)) and got == sorted(got)  # each pair once (owner rule), sorted
    assert set(got) <= truth  # every returned pair is exact ...
    np.testing.assert_array_equal(s, np.einsum("ij,ij->i", x[i], x[j]))
    assert planted <= set(got)  # ... and every planted near-duplicate is found
    assert len(set(got)) / len(truth) > 0.97
    assert [st["rows"] for st in stats] == rows and sum(st["pairs"] for st in stats) == len(got)

    ri, rj, rs, rstats = partitioned_pairs(tmp_path / "parts", tau, engine="ray")
    np.testing.assert_array_equal(ri, i)
    np.testing.assert_array_equal(rj, j)
    np.testing.assert_array_equal(rs, s)
    assert [st["pairs"] for st in rstats] == [st["pairs"] for st in stats]
    # probe rows by reference: Ray tasks read the neighbouring partitions' files; same arrays
    build_partitions(emb, tmp_path / "ref", tau, nparts=12, seed=0, block_rows=1000, max_buffer_rows=3000,
                     probe_store="ref")
    for a, b in zip(partitioned_pairs(tmp_path / "ref", tau, engine="ray")[:3], (i, j, s)):
        np.testing.assert_array_equal(a, b)
