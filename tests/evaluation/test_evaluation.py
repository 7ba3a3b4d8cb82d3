"""auditor.evaluation: metrics on hand-made cases, the code-built benchmark set (determinism, ground truth ==
files written), imagededup's ground-truth files, and the evaluation run on real photos."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from auditor.evaluation import metrics as M
from auditor.evaluation.benchmark_set import (
    GROUND_TRUTH, IMAGES_DIR, build_benchmark_set, default_sources, imagededup_folder_ground_truth,
    load_benchmark_set, load_imagededup_ground_truth, small_sources,
)
from auditor.evaluation.transforms import SMALL_TRANSFORMS, TRANSFORMS

# ------------------------------------------------------------------ metrics


def test_pair_conversions():
    assert M.pairs_from_clusters([["a", "b", "c"], ["d"], ["e", "f"]]) == {
        ("a", "b"), ("a", "c"), ("b", "c"), ("e", "f")}
    assert M.pairs_from_mapping({"a": ["b"], "b": ["a", "c"], "c": [("a", 3)]}) == {
        ("a", "b"), ("b", "c"), ("a", "c")}
    assert M.pairs_from_pairs([(2, 1), (1, 2), (3, 3)]) == {(1, 2)}
    assert M.clusters_from_labels([0, 1, 0, 2]) == [[0, 2], [1], [3]]
    with pytest.raises(ValueError):
        M.canonical_pair(1, 1)


def test_pair_metrics_hand_case():
    truth = M.pairs_from_clusters([[1, 2, 3], [4, 5]])          # (1,2) (1,3) (2,3) (4,5)
    pred = {(2, 1), (1, 3), (5, 6)}                              # 2 right, 1 wrong
    m = M.pair_metrics(pred, truth)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 2)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    empty = M.pair_metrics([], truth)
    assert empty["precision"] == 1.0 and empty["recall"] == 0.0 and empty["f1"] == 0.0
    assert M.pair_metrics([], [])["recall"] == 1.0


def test_cluster_purity():
    true = [[1, 2, 3], [4, 5]]
    assert M.cluster_purity([[1, 2, 3], [4, 5]], true) == 1.0
    # {1,2,4}: majority 2 of 3; {3,5}: 1 of 2; {6} (unknown item): 1 of 1
    assert M.cluster_purity([[1, 2, 4], [3, 5], [6]], true) == pytest.approx(4 / 6)
    assert M.cluster_purity([], true) == 1.0


def test_threshold_sweep_and_recall_at_precision():
    # distances (lower = duplicate); labels; 5 true pairs in all, one never scored
    d = np.array([0, 1, 1, 3, 4, 6, 8])
    y = np.array([1, 1, 0, 1, 0, 1, 0], dtype=bool)
    sweep = {r["threshold"]: r for r in M.threshold_sweep(d, y, n_positives=5, higher_is_better=False)}
    assert sorted(sweep) == [0, 1, 3, 4, 6, 8]
    assert (sweep[1]["tp"], sweep[1]["fp"], sweep[1]["fn"]) == (2, 1, 3)
    assert sweep[3]["precision"] == pytest.approx(3 / 4) and sweep[3]["recall"] == pytest.approx(3 / 5)
    assert sweep[8]["recall"] == pytest.approx(4 / 5)
    r = M.recall_at_precision(d, y, 1.0, n_positives=5, higher_is_better=False)
    assert r["threshold"] == 0 and r["recall"] == pytest.approx(1 / 5)
    r = M.recall_at_precision(d, y, 0.6, n_positives=5, higher_is_better=False)
    assert r["threshold"] == 6 and r["recall"] == pytest.approx(4 / 5)
    # similarities (higher = duplicate) and explicit thresholds
    s = np.array([0.99, 0.95, 0.9, 0.5])
    ys = np.array([1, 1, 0, 1], dtype=bool)
    rows = M.threshold_sweep(s, ys, higher_is_better=True, thresholds=[0.95, 0.5])
    assert [(r["threshold"], r["tp"], r["fp"]) for r in rows] == [(0.95, 2, 0), (0.5, 3, 1)]
    assert M.recall_at_precision(s, ys, 0.99)["threshold"] == pytest.approx(0.95)
    assert M.recall_at_precision(np.array([0.3]), np.array([False]), 0.5)["threshold"] is None
    with pytest.raises(ValueError):
        M.threshold_sweep(d, y, n_positives=2)


# ------------------------------------------------------------------ benchmark set


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory, shared_data):
    sources = default_sources(shared_data)
    if len(sources) < 20:
        pytest.skip("not enough real photos")
    # imagenet photos only: small and fast
    sources = [s for s in sources if s.parent.name == "imagenet-256"]
    a = tmp_path_factory.mktemp("bench_a")
    b = tmp_path_factory.mktemp("bench_b")
    gta = build_benchmark_set(a, sources, n_originals=4, n_distractors=3, seed=7)
    gtb = build_benchmark_set(b, sources, n_originals=4, n_distractors=3, seed=7)
    return a, gta, b, gtb, sources


def test_benchmark_set_deterministic(small_set, tmp_path):
    a, gta, b, gtb, sources = small_set
    assert gta == gtb
    files_a = sorted(p.name for p in (a / IMAGES_DIR).iterdir())
    assert files_a == sorted(p.name for p in (b / IMAGES_DIR).iterdir())
    for f in files_a:
        assert _sha(a / IMAGES_DIR / f) == _sha(b / IMAGES_DIR / f), f
    gtc = build_benchmark_set(tmp_path / "c", sources, n_originals=4, n_distractors=3, seed=8)
    assert [im["source"] for im in gtc["images"]] != [im["source"] for im in gta["images"]]


def test_benchmark_ground_truth_matches_files(small_set, shared_data):
    a, gt, *_ = small_set
    assert gt["errors"] == []
    on_disk = sorted(p.name for p in (a / IMAGES_DIR).iterdir())
    assert sorted(im["file"] for im in gt["images"]) == on_disk
    assert load_benchmark_set(a)["images"] == json.loads((a / GROUND_TRUTH).read_text())["images"]
    roles = [im["role"] for im in gt["images"]]
    assert roles.count("original") == 4 and roles.count("distractor") == 3
    assert roles.count("copy") == 4 * len(TRANSFORMS)
    src_dir = shared_data / "photos"  # sources are named <folder>/<file>
    by_file = {im["file"]: im for im in gt["images"]}
    for g in gt["groups"]:
        orig = by_file[g[0]]
        assert orig["role"] == "original"
        # originals and distractors are byte copies of their source
        assert _sha(a / IMAGES_DIR / g[0]) == _sha(src_dir / orig["source"])
        assert sorted(gt["duplicates"][g[0]]) == sorted(g[1:])
        with Image.open(src_dir / orig["source"]) as im:
            W, H = im.size
        for f in g[1:]:
            c = by_file[f]
            assert c["source"] == orig["source"] and c["group"] == orig["group"]
            with Image.open(a / IMAGES_DIR / f) as im:
                im.load()
                size = im.size
                fmt = im.format
            p, t = c["params"], c["transform"]
            if t == "jpeg":
                assert 30 <= p["quality"] <= 95 and fmt == "JPEG" and size == (W, H)
            elif t == "resize":
                assert 0.3 <= p["scale"] <= 0.8 and list(size) == p["size"]
            elif t == "crop":
                assert 0.05 <= p["area_removed"] <= 0.30
                x0, y0, x1, y1 = p["box"]
                assert size == (x1 - x0, y1 - y0) and 0.69 <= (size[0] * size[1]) / (W * H) <= 0.96
            elif t in ("border", "center_crop"):
                assert size == (256, 256) and fmt == "JPEG"
            elif t == "rotate":
                assert 2 <= abs(p["degrees"]) <= 10 and size == (W, H)
            elif t == "crop25":
                x0, y0, x1, y1 = p["box"]
                assert p["area_removed"] == 0.25 and size == (x1 - x0, y1 - y0)
                assert 0.73 <= (size[0] * size[1]) / (W * H) <= 0.77
            elif t in ("hflip", "rotate90"):
                with Image.open(a / IMAGES_DIR / g[0]) as o, Image.open(a / IMAGES_DIR / f) as im:
                    px = np.asarray(o.convert("RGB"))
                    want = px[:, ::-1] if t == "hflip" else np.rot90(px, k=1 if p["degrees"] == 90 else 3)
                    np.testing.assert_array_equal(np.asarray(im.convert("RGB")), want)
            elif t == "pad":
                l, tp, r, b = p["pad"]
                assert size == (W + l + r, H + tp + b) and min(p["pad"]) >= 1
                with Image.open(a / IMAGES_DIR / g[0]) as o, Image.open(a / IMAGES_DIR / f) as im:
                    inner = np.asarray(im.convert("RGB"))[tp:tp + H, l:l + W]
                    np.testing.assert_array_equal(inner, np.asarray(o.convert("RGB")))
                    assert tuple(np.asarray(im.convert("RGB"))[0, 0]) == tuple(p["colour"])
            elif t == "badge":
                assert size == (W, H) and 0.10 * min(W, H) - 1 <= p["side_px"] <= 0.22 * min(W, H)
    for im in gt["images"]:
        if im["role"] == "distractor":
            assert _sha(a / IMAGES_DIR / im["file"]) == _sha(src_dir / im["source"])
            assert im["file"] not in gt["duplicates"]


def test_benchmark_set_refuses_bad_arguments(tmp_path, shared_data):
    sources = default_sources(shared_data)[:5]
    with pytest.raises(ValueError):
        build_benchmark_set(tmp_path / "x", sources, n_originals=4, n_distractors=3)
    with pytest.raises(ValueError):
        build_benchmark_set(tmp_path / "x", sources, n_originals=1, n_distractors=0, transforms=["nope"])
    with pytest.raises(ValueError):
        build_benchmark_set(sources[0].parent / "sub", sources, n_originals=1, n_distractors=0)
    tiny = shared_data / "photos" / "tiny-imagenet-200" / "x.jpg"  # the descriptor's training photos: refused
    with pytest.raises(ValueError, match="training photos"):
        build_benchmark_set(tmp_path / "x", sources + [tiny], n_originals=1, n_distractors=0)


def test_small_image_part(tmp_path, shared_data):
    small = small_sources(shared_data)
    if len(small) < 100:
        pytest.skip("cifar10-test photos absent")
    photos = [s for s in default_sources(shared_data) if s.parent.name == "imagenet-256"]
    gt = build_benchmark_set(tmp_path, photos, n_originals=1, n_distractors=1, transforms=["jpeg"], seed=3,
                             small_sources=small, n_small_originals=5, n_small_distractors=7)
    assert gt["errors"] == []
    by_file = {im["file"]: im for im in gt["images"]}
    small_groups = [g for g in gt["groups"] if g[0].startswith("s")]
    assert len(small_groups) == 5 and all(len(g) == 1 + len(SMALL_TRANSFORMS) for g in small_groups)
    assert sum(1 for f in by_file if f.startswith("sd")) == 7
    for g in small_groups:
        with Image.open(tmp_path / IMAGES_DIR / g[0]) as o:
            W, H = o.size
            orig = np.asarray(o.convert("RGB"))
        assert (W, H) == (32, 32)
        for f in g[1:]:
            c = by_file[f]
            with Image.open(tmp_path / IMAGES_DIR / f) as im:
                size, px = im.size, np.asarray(im.convert("RGB"))
            if c["transform"] in ("small_crop", "small_crop_jpeg", "small_crop_resize"):
                x0, y0, x1, y1 = c["params"]["box"]
                assert 1 <= W - (x1 - x0) <= 2 and 1 <= H - (y1 - y0) <= 2
                want = (W, H) if c["transform"] == "small_crop_resize" else (x1 - x0, y1 - y0)
                assert size == want
                if c["transform"] == "small_crop":  # lossless: the very pixels of the original
                    np.testing.assert_array_equal(px, orig[y0:y1, x0:x1])
            else:
                assert size == (W, H)


# ------------------------------------------------------------------ method scores


def _hand_set():
    from auditor.evaluation.run import EvalSet

    # group A: a0 (original), a1 (jpeg), a2 (hflip); group B: b0, b1 (jpeg); x: a distractor
    files = ["a0", "a1", "a2", "b0", "b1", "x"]
    tr = {"a1": "jpeg", "a2": "hflip", "b1": "jpeg"}
    orig = {"a1": "a0", "a2": "a0", "b1": "b0"}
    return EvalSet(files, ".", [["a0", "a1", "a2"], ["b0", "b1"]], tr, orig)


def test_cluster_report_hand_case():
    from auditor.evaluation.methods import cluster_report

    es = _hand_set()
    # clusters {a0, a1, x}, {b0, b1}; a2 alone: pairs a0a1 (tp) a0x a1x (fp) b0b1 (tp)
    r = cluster_report(es, np.array([0, 0, -1, 1, 1, 0]))
    assert (r["n_pred"], r["tp"], r["fp"]) == (4, 2, 2) and r["precision"] == pytest.approx(0.5, abs=1e-4)
    assert r["pair_recall"] == pytest.approx(2 / 4, abs=1e-4)           # a0a1 b0b1 of a0a1 a0a2 a1a2 b0b1
    assert r["copy_recall"] == pytest.approx(2 / 3, abs=1e-4)           # a1 and b1 found, a2 not
    assert r["per_transform"] == {"hflip": 0.0, "jpeg": 1.0}
    assert cluster_report(es, np.full(6, -1))["precision"] == 1.0


def test_sweep_report_hand_case():
    from auditor.evaluation.methods import best_row, sweep_report

    es = _hand_set()
    n = es.n
    key = {f: k for k, f in enumerate(es.files)}
    pairs = [("a0", "a1", 2), ("b0", "b1", 4), ("a1", "a2", 9), ("a0", "x", 6), ("a0", "a2", 12)]
    keys = np.array([min(key[a], key[b]) * n + max(key[a], key[b]) for a, b, _ in pairs])
    d = np.array([x for *_, x in pairs], float)
    rep = sweep_report(es, keys, d, False, [2, 4, 6, 9, 12])
    rows = {r["threshold"]: r for r in rep["sweep"]}
    assert rows[4]["precision"] == 1.0 and rows[4]["copy_recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert rows[6]["fp"] == 1 and rows[6]["precision"] == pytest.approx(2 / 3, abs=1e-4)
    # a1a2 is a true copy-to-copy pair: pair recall rises, copy recall does not
    assert rows[9]["pair_recall"] == pytest.approx(3 / 4, abs=1e-4)
    assert rows[9]["copy_recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert rows[12]["copy_recall"] == 1.0 and rows[12]["per_transform"]["hflip"] == 1.0
    assert rep["best"]["threshold"] == 4                        # the best row at precision 0.99
    assert best_row(rep["sweep"], 0.5)["threshold"] == 12
    assert best_row([{"precision": 0.5, "tp": 1, "copy_recall": 1.0, "fp": 1}], 0.99) is None


# ------------------------------------------------------------------ imagededup ground truth


def test_imagededup_ground_truth_loader(shared_data):
    ev = shared_data / "neardup" / "imagededup" / "evaluation_files"
    gt = load_imagededup_ground_truth(ev / "ground_truth.json")
    raw = json.loads((ev / "ground_truth.json").read_text())
    assert set(raw) <= set(gt)
    for k, dups in raw.items():
        for d in dups:
            assert k in gt[d] and d in gt[k]  # made symmetric
    assert len(gt) == sum(1 + len(v) for v in raw.values())
    truth = M.pairs_from_mapping(gt)
    assert len(truth) == 6  # two files with three copies each
    # imagededup's own "incorrect retrievals" file scores below 1 against it
    wrong = load_imagededup_ground_truth(ev / "incorrect_retrievals.json")
    m = M.pair_metrics(M.pairs_from_mapping(wrong), truth)
    assert m["tp"] == 4 and m["fp"] == 2 and m["recall"] == pytest.approx(4 / 6, abs=1e-4)
    right = load_imagededup_ground_truth(ev / "all_correct_retrievals.json")
    assert M.pair_metrics(M.pairs_from_mapping(right), truth)["f1"] == 1.0


def test_imagededup_folder_ground_truth(shared_data):
    folder = shared_data / "neardup" / "imagededup" / "mixed_images"
    gt = imagededup_folder_ground_truth(folder)
    assert "ukbench09268_corrupt.jpg" not in gt
    assert gt["ukbench00120.jpg"] == ["ukbench00120_hflip.jpg", "ukbench00120_resize.jpg",
                                      "ukbench00120_rotation.jpg"]
    assert gt["ukbench09268.jpg"] == []
    nested = imagededup_folder_ground_truth(shared_data / "neardup" / "imagededup" / "mixed_nested_images")
    assert nested["lvl1/ukbench00120.jpg"] == sorted(["lvl1/lvl2a/ukbench00120_rotation.jpg",
                                                      "lvl1/lvl2b/ukbench00120_resize.jpg",
                                                      "ukbench00120_hflip.jpg"])


# ------------------------------------------------------------------ evaluation run


def test_evaluate_auditor_on_small_set(small_set):
    from auditor.evaluation.run import EvalSet, evaluate_auditor

    a, gt, *_ = small_set
    es = EvalSet.from_benchmark(a)
    n_group = 1 + len(TRANSFORMS)
    assert len(es.true_keys) == 4 * n_group * (n_group - 1) // 2
    assert sorted(es.by_transform) == sorted(TRANSFORMS) and all(len(v) == 4 for v in es.by_transform.values())
    res = evaluate_auditor(es, max_distance=20)
    assert res["n_hashed"] == es.n and res["errors"] == []
    ph = res["phash"]
    row10 = next(r for r in ph["sweep"] if r["threshold"] == 10)
    # pHash survives re-encoding and resizing, and is not flip invariant
    assert row10["per_transform_recall"]["jpeg"] == 1.0 and row10["per_transform_recall"]["resize"] == 1.0
    assert row10["per_transform_recall"]["hflip"] <= 0.25
    recalls = [r["recall"] for r in ph["sweep"]]
    assert recalls == sorted(recalls)  # recall grows with the threshold
    anyp = res["any_signal"]["recall_at_precision"]["0.95"]
    assert anyp["recall"] >= max(res["phash"]["recall_at_precision"]["0.95"]["recall"],
                                 res["dhash"]["recall_at_precision"]["0.95"]["recall"]) - 1e-12
    # an embedding signal: exact copies of the pHash bits as +-1 vectors make a (toy) embedding
    from auditor.evaluation.run import hash_files

    phs, _, _, _ = hash_files(es.root, es.files)
    bits = ((phs[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).astype(np.float32) * 2 - 1
    emb = bits / np.sqrt(64)
    res2 = evaluate_auditor(es, embeddings=emb, max_distance=16)  # cos >= 0.5 <=> hamming <= 16
    # cosine of +-1 vectors = 1 - 2 * hamming / 64: the same ranking as pHash
    assert res2["embedding"]["recall_at_precision"]["0.95"]["recall"] == pytest.approx(
        res2["phash"]["recall_at_precision"]["0.95"]["recall"], abs=1e-4)


def test_evaluate_on_imagededup_folder(shared_data):
    from auditor.evaluation.run import EvalSet, evaluate_auditor

    folder = shared_data / "neardup" / "imagededup" / "mixed_images"
    es = EvalSet.from_mapping(folder, imagededup_folder_ground_truth(folder))
    assert es.n == 6 and len(es.true_keys) == 6
    res = evaluate_auditor(es, max_distance=16)
    assert [e["key"] for e in res["errors"]] == ["ukbench09268_corrupt.jpg"]
    assert res["n_hashed"] == 5


def test_imagededup_comparison_runs(small_set):
    pytest.importorskip("imagededup")
    from auditor.evaluation.run import EvalSet, evaluate_imagededup

    a, *_ = small_set
    es = EvalSet.from_benchmark(a)
    res = evaluate_imagededup(es, methods=("PHash",), max_distance=16)
    ph = res["PHash"]
    assert ph["n_encoded"] == es.n
    row = next(r for r in ph["sweep"] if r["threshold"] == 10)
    assert row["per_transform_recall"]["jpeg"] == 1.0


# ------------------------------------------------------------------ the accuracy benchmark, --quick


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, shared_data):
    import importlib.util
    from pathlib import Path

    if len(small_sources(shared_data)) < 100:
        pytest.skip("cifar10-test photos absent")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_dedup_accuracy.py"
    spec = importlib.util.spec_from_file_location("bench_dedup_accuracy", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    work, out = tmp_path_factory.mktemp("acc_work"), tmp_path_factory.mktemp("acc_out")
    assert mod.main(["--quick", "--shared-data", str(shared_data), "--work", str(work), "--out", str(out)]) == 0
    return json.loads((out / "dedup_accuracy.json").read_text()), out, work


def test_quick_benchmark_methods_and_files(quick_run):
    res, out, work = quick_run
    md = (out / "dedup_accuracy.md").read_text()
    assert "Held-out" in md and "tiny-imagenet-200" in md and "## Recall at pair precision" in md
    assert res["build"]["errors"] == []
    ts = set(res["transforms"])
    assert set(TRANSFORMS) | set(SMALL_TRANSFORMS) == ts
    m = res["methods"]
    for name in ("auditor default", "auditor hash-only", "auditor pHash", "auditor dHash"):
        assert name in m, name
    # every method is scored over the same copies
    assert res["n_copies"] == 6 * len(TRANSFORMS) + 4 * len(SMALL_TRANSFORMS)
    assert set(res["targets"]) >= {"precision >= 0.99", "overall recall >= 0.90", "hflip >= 0.80"}
    # the set never holds a training photo of the descriptor
    from auditor.evaluation.benchmark_set import training_wnids

    gt = load_benchmark_set(work / "set")
    assert not any("tiny-imagenet" in im["source"] for im in gt["images"])
    # nor a photo of one of its ImageNet classes (Tiny-ImageNet is a subset of ImageNet train)
    held = training_wnids(res["shared_data"])
    assert len(held) == 200
    assert not any(im["source"].split("/")[1].split("_")[0] in held for im in gt["images"]
                   if im["source"].startswith("imagenet-256/"))


def test_quick_benchmark_real_behaviour(quick_run):
    res, *_ = quick_run
    m = res["methods"]
    d = m["auditor default"]
    # the default finds every re-encoded, resized and colour-jittered copy, with no false pair
    assert d["precision"] == 1.0 and d["fp"] == 0
    for t in ("jpeg", "resize", "jitter", "small_jpeg"):
        assert d["per_transform"][t] == 1.0, t
    # the stored pHash is no flip or quarter-turn invariant: no mirrored / rotated copy within 10 bits
    ph = next(r for r in res["reports"]["auditor pHash"]["sweep"] if r["threshold"] == 10)
    assert ph["per_transform"]["hflip"] == 0.0 and ph["per_transform"]["rotate90"] == 0.0
    # hash-only matching over flips and 90-degree rotations (index phash_dihedral, dedup
    # hash_dihedral_max_distance) finds every mirrored and rotated copy
    h = m["auditor hash-only"]
    assert h["per_transform"]["hflip"] == 1.0 and h["per_transform"]["rotate90"] == 1.0
    # a swept method's recall never falls as its threshold loosens
    for name, rep in res["reports"].items():
        if "sweep" in rep:
            rec = [r["copy_recall"] for r in rep["sweep"]]
            hib = name.startswith("descriptor")
            assert rec == sorted(rec, reverse=hib), name


def test_imagededup_pairs_by_faiss_equal_its_own_search(quick_run):
    pytest.importorskip("imagededup")
    from auditor.evaluation.methods import imagededup_sweep
    from auditor.evaluation.run import EvalSet

    res, out, work = quick_run
    es = EvalSet.from_benchmark(work / "set")
    own = imagededup_sweep(es, "DHash", 16, search="imagededup")
    fast = imagededup_sweep(es, "DHash", 16, search="faiss")
    assert own["n_encoded"] == es.n
    strip = [{k: v for k, v in r.items()} for r in own["sweep"]]
    assert strip == fast["sweep"]
    assert res["methods"]["imagededup DHash"]["per_transform"]["jpeg"] == 1.0
