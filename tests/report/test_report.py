"""The HTML report: self-contained, inert with hostile captions, deterministic, honest about missing stages.

Run folders are built for real: a dataset folder of Kodak photos (plus JPEG re-encodes of one of them, the
duplicates) is indexed with ``auditor.index.runner.run_index``; the dedup and probe outputs are written in
their documented layouts from that index, with real PNG generations.
"""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from auditor.cli import main
from auditor.report.config import ReportConfig
from auditor.report.render import build_report, md_cell
from auditor.utils import write_json, write_parquet

LONG = "<iframe src=javascript:alert(1)>" * 320  # ~10 kB
HOSTILE = [
    "<script>alert('x')</script> a red barn",
    '"><img src=x onerror=alert(1)> quote breaker',
    "' onmouseover='alert(1)' single quotes",
    "&lt;b&gt;entity&amp;amp; already escaped &#x3C;script&#x3E;",
    "\u202eevil\u202c \u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 right-to-left",
    "emoji \U0001f525\U0001f4af \U0001f469\u200d\U0001f469\u200d\U0001f467 family",
    "{{ 7*7 }} {% raw %} jinja | pipes | and *stars* [link](javascript:alert(1))",
    LONG,
]
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "table", "tr", "th", "td", "div",
                "p", "img", "figure", "figcaption", "span", "bdi", "strong", "em", "pre", "br"}
LOCAL_ROOTS = ("/work", "/tmp", "/home", "/root")
DATA_URI = re.compile(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+")
REPO = Path(__file__).resolve().parents[2]


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    p.close()
    return p


def _png(img: Image.Image) -> bytes:
    b = io.BytesIO()
    img.save(b, format="PNG")
    return b.getvalue()


def _jpeg_copy(img: Image.Image, quality: int) -> Image.Image:
    b = io.BytesIO()
    img.save(b, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(b.getvalue())).convert("RGB")


def build_run(tmp: Path, kodak: list[Path], imagenet: list[Path], stages=("index", "dedup", "probe")) -> Path:
    """A real run folder: index of 6 Kodak photos + 2 JPEG re-encodes of kodak01 (captions = HOSTILE);
    dedup outputs clustering the three copies; probe results with real generations (full-size copies of the
    training photo, and 32-px unrelated photos with a 32-px evidence pair, as a small model makes them).
    Absolute local paths are planted where real runs record them (index.json, provenance, error texts)."""
    from auditor.config import load_config
    from auditor.index.runner import run_index

    model_dir = (tmp / "models" / "sd-tiny-v1").resolve()
    ds = tmp / "kodak-set"
    ds.mkdir()
    names = []
    for i, p in enumerate(kodak[:6]):
        (ds / p.name).write_bytes(p.read_bytes())
        names.append(p.name)
    base = Image.open(kodak[0]).convert("RGB")
    for q, name in ((70, "dup_a.jpg"), (85, "dup_b.jpg")):
        base.save(ds / name, format="JPEG", quality=q)
        names.append(name)
    for i, name in enumerate(sorted(names)):
        (ds / (name.rsplit(".", 1)[0] + ".txt")).write_text(HOSTILE[i % len(HOSTILE)], encoding="utf-8")
    # the same caption on the three copies: caption duplication
    for name in ("dup_a.jpg", "dup_b.jpg", kodak[0].name):
        (ds / (name.rsplit(".", 1)[0] + ".txt")).write_text(HOSTILE[0], encoding="utf-8")

    run = tmp / "runs" / "my-run"
    cfg = load_config(overrides=["index.workers=0", "index.progress=false"])
    store = run_index(str(ds.resolve()), run, cfg)
    table = store.table()
    assert len(table) == 8

    if "dedup" in stages:
        d = run / "dedup"
        cluster_of = {}
        dup_keys = [kodak[0].name, "dup_a.jpg", "dup_b.jpg"]
        cid = 1
        for k in table["key"]:
            if k in dup_keys:
                cluster_of[k] = 0
            else:
                cluster_of[k] = cid
                cid += 1
        man = pd.DataFrame({
            "key": table["key"], "shard": table["shard"],
            "cluster_id": [cluster_of[k] for k in table["key"]],
        })
        man["cluster_size"] = man.groupby("cluster_id")["key"].transform("size")
        man["is_representative"] = [k == kodak[0].name or cluster_of[k] != 0 for k in man["key"]]
        man["keep"] = man["is_representative"]
        man["reason"] = ["" if r else "phash" for r in man["is_representative"]]
        man["similarity_to_representative"] = [1.0 if r else 0.97 for r in man["is_representative"]]
        man["caption_dup_count"] = [2 if k in dup_keys else 0 for k in man["key"]]
        write_parquet(d / "manifest.parquet", man)
        cl = man.groupby("cluster_id").agg(size=("key", "size")).reset_index()
        rep = man[man["is_representative"]].set_index("cluster_id")
        cl["representative_key"] = rep.loc[cl["cluster_id"], "key"].to_numpy()
        cl["representative_shard"] = rep.loc[cl["cluster_id"], "shard"].to_numpy()
        cl["n_captions"] = 1
        cl["is_placeholder"] = False
        write_parquet(d / "clusters.parquet", cl)
        # every hostile caption is in the risk ranking (rank 1 = the duplicated photo)
        n = len(HOSTILE)
        risk = pd.DataFrame({
            "rank": np.arange(1, n + 1), "cluster_id": [0] + list(range(1, n)),
            "cluster_size": [3] + [1] * (n - 1), "caption": HOSTILE,
            "caption_count": [3] + [1] * (n - 1), "n_captions": [1] * n,
            "representative_key": [cl.loc[min(c, len(cl) - 1), "representative_key"] for c in range(n)],
            "representative_shard": ["00000"] * n, "score": np.linspace(3.5, 1.0, n), "is_placeholder": [False] * n})
        write_parquet(d / "risk.parquet", risk)
        write_json(d / "summary.json", {"duplicate_rate": 0.25, "n_samples": 8,
                                        "manifest": str((d / "manifest.parquet").resolve())})

    if "probe" in stages:
        p = run / "probe"
        (p / "generations").mkdir(parents=True)
        gen_rows = []
        # "memorized" prompt: the generations are JPEG-degraded copies of the training image
        # (paths relative to RUN_DIR, as the probe writes them)
        for seed in range(3):
            rel = f"probe/generations/copy_{seed}.png"
            (run / rel).write_bytes(_png(_jpeg_copy(base, 30 + 10 * seed)))
            gen_rows.append({"caption": HOSTILE[0], "variant": "original", "seed": seed, "path": rel,
                             "tiled_l2": 0.02 + 0.01 * seed, "copy_similarity": 0.98, "verdict": "verbatim",
                             "best_key": kodak[0].name, "best_shard": "00000"})
        (p / "evidence").mkdir()
        pair = Image.new("RGB", (2 * 256 + 8, 171), (255, 255, 255))
        pair.paste(_jpeg_copy(base, 30).resize((256, 171)), (0, 0))
        pair.paste(base.resize((256, 171)), (264, 0))
        (p / "evidence" / "pair.png").write_bytes(_png(pair))
        # the probe's own evidence layout at a small model's resolution: generation | 8 px | training, 32 px each
        small = Image.new("RGB", (2 * 32 + 8, 32), (255, 255, 255))
        small.paste(_jpeg_copy(base, 30).resize((32, 32)), (0, 0))
        small.paste(base.resize((32, 32)), (40, 0))
        (p / "evidence" / "exact_seed0_vs_kodak01.png").write_bytes(_png(small))
        # not memorized: unrelated real photos at 32 px (paths relative to RUN_DIR/probe are accepted too)
        for seed in range(2):
            rel = f"generations/other_{seed}.png"
            (p / rel).write_bytes(_png(Image.open(imagenet[seed]).convert("RGB").resize((32, 32))))
            gen_rows.append({"caption": HOSTILE[1], "variant": "original", "seed": seed, "path": rel,
                             "tiled_l2": 0.4, "copy_similarity": 0.2, "verdict": "none",
                             "best_key": kodak[1].name, "best_shard": "00000"})
        # a hostile path: must never be inlined
        secret = tmp / "secret.png"
        secret.write_bytes(_png(Image.new("RGB", (8, 8), (1, 2, 3))))
        gen_rows.append({"caption": HOSTILE[1], "variant": "original", "seed": 9, "path": "../../secret.png",
                         "tiled_l2": 0.0, "copy_similarity": 0.0, "verdict": "none", "best_key": kodak[1].name,
                         "best_shard": "00000"})
        write_parquet(p / "generations.parquet", pd.DataFrame(gen_rows))
        res = pd.DataFrame([
            {"caption": HOSTILE[0], "variant": "original", "cluster_id": 0, "cluster_size": 3, "seeds": [0, 1, 2],
             "n_generations": 3, "unet_evals": 150, "whitebox_score": 4.2, "whitebox_flag": True,
             "max_copy_similarity": 0.98, "min_tiled_l2": 0.02, "largest_clique": 3, "verbatim_count": 3,
             "template_count": 0, "verdict": "verbatim", "best_key": kodak[0].name, "best_shard": "00000",
             "best_distance": 0.02, "evidence": ["probe/evidence/pair.png",
                                                 "probe/evidence/exact_seed0_vs_kodak01.png"], "error": None},
            {"caption": HOSTILE[1], "variant": "original", "cluster_id": 1, "cluster_size": 1, "seeds": [0, 1],
             "n_generations": 3, "unet_evals": 100, "whitebox_score": 0.3, "whitebox_flag": False,
             "max_copy_similarity": 0.2, "min_tiled_l2": 0.4, "largest_clique": 1, "verbatim_count": 0,
             "template_count": 0, "verdict": "none", "best_key": kodak[1].name, "best_shard": "00000",
             "best_distance": 0.4, "evidence": [], "error": None},
            {"caption": HOSTILE[5], "variant": "paraphrase", "cluster_id": 2, "cluster_size": 1, "seeds": [],
             "n_generations": 0, "unet_evals": 0, "whitebox_score": np.nan, "whitebox_flag": False,
             "max_copy_similarity": np.nan, "min_tiled_l2": np.nan, "largest_clique": 0, "verbatim_count": 0,
             "template_count": 0, "verdict": "error", "best_key": None, "best_shard": None,
             "best_distance": np.nan, "evidence": [],
             "error": f"<b>CUDA</b> out of memory loading {model_dir}/unet/diffusion_pytorch_model.safetensors"},
        ])
        write_parquet(p / "results.parquet", res)
        write_json(p / "provenance.json", {"model": "tiny-test-model <script>", "seed": 0,
                                           "started": "2024-01-01T00:00:00Z",
                                           "generator": {"generator": "diffusers", "model": str(model_dir),
                                                         "model_folder": str(model_dir)},
                                           "config": {"variants_file": str(tmp.resolve() / "variants.json")}})
    return run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, kodak, imagenet):
    return build_run(tmp_path_factory.mktemp("report"), kodak, imagenet)


@pytest.fixture(scope="module")
def rendered(full_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "r" / "report.html"
    path = build_report(full_run, ReportConfig(progress=False), out)
    return path, path.read_text(encoding="utf-8")


def test_hostile_captions_are_inert(rendered):
    _, html = rendered
    doc = parse(html)
    tags = [t for t, _ in doc.tags]
    assert set(tags) <= ALLOWED_TAGS, set(tags) - ALLOWED_TAGS
    for tag, attrs in doc.tags:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name)
            assert "javascript:" not in (value or "").lower(), (tag, name, value)
    # no injected elements: exactly the images the report itself put there
    assert "script" not in tags and "iframe" not in tags and "svg" not in tags
    text = "".join(doc.text)
    # every hostile caption is shown as literal text (a jinja expression is not evaluated)
    for cap in HOSTILE[:7]:
        assert cap in text, cap
    assert "{{ 7*7 }}" in text and "49 " not in text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "&amp;lt;b&amp;gt;entity" in html  # entities are escaped again, shown as typed
    # the 10 kB caption is cut, not dropped
    assert LONG[:200] in text and LONG not in text
    assert "\u2026" in text
    # the CSP forbids scripts even if something slipped through
    metas = [dict(a) for t, a in doc.tags if t == "meta"]
    csp = [m["content"] for m in metas if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0] and "img-src data:" in csp[0]


def test_every_image_is_inline(rendered):
    _, html = rendered
    doc = parse(html)
    srcs = [dict(a).get("src") for t, a in doc.tags if t == "img"]
    # thumbnails of the cluster (3 copies + ...), risk table, 2 plots, generation pairs
    assert len(srcs) >= 12
    for s in srcs:
        assert s and s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")), s[:40]
    for t, attrs in doc.tags:
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "background", "poster", "data"):
                assert value.startswith("data:image/"), (t, name, value[:40])
    assert "http:" not in html and "https:" not in html and "file:" not in html
    # the images decode, and the generations are shown: 3 copies + 2 unrelated + 3+2 training thumbnails
    import base64

    sizes = set()
    for s in srcs:
        im = Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))
        im.load()
        sizes.add(im.size)
    assert (160, 106) in sizes or (160, 107) in sizes  # a 768x512 Kodak thumbnail at thumbnail_px=160


def test_sections_and_numbers(rendered, full_run):
    path, html = rendered
    text = "".join(parse(html).text)
    for heading in ("Dataset", "Duplicates", "Largest duplicate clusters", "Caption duplication",
                    "Extraction probe", "Provenance"):
        assert heading in text
    assert "Not in this run" not in text
    # the path-traversal generation is refused, the file outside the run is not inlined
    assert "leaves the probe folder" in text
    # numbers
    summary = json.loads((path.parent / "summary.json").read_text())
    assert summary["index"]["n_indexed"] == 8
    assert summary["dedup"]["n_duplicate_clusters"] == 1
    assert summary["dedup"]["max_cluster_size"] == 3
    assert summary["dedup"]["duplicate_rate"] == 0.25  # taken from dedup/summary.json
    assert summary["index"]["max_caption_repeats"] == 3
    pr = summary["probe"]
    assert pr["n_extracted_captions"] == 1 and pr["n_verbatim_copies"] == 3
    assert pr["verdicts"] == {"verbatim": 1, "template": 0, "none": 1, "error": 1}
    assert pr["extracted"][0]["best_key"] == "kodak01.png"
    # the error message of a failed probe is shown, escaped
    assert "&lt;b&gt;CUDA&lt;/b&gt; out of memory" in html
    # provenance is there (its own timestamp included), escaped
    assert "2024-01-01T00:00:00Z" in text and "tiny-test-model &lt;script&gt;" in html


def test_summary_markdown_is_safe(rendered):
    path, _ = rendered
    md = (path.parent / "summary.md").read_text(encoding="utf-8")
    assert "<script>" not in md and "<img" not in md
    assert "&lt;script&gt;" in md
    assert "1 extracted" in md
    for line in md.splitlines():
        if line.startswith("| verbatim"):
            # caption cell cannot break the table: four unescaped separators only
            assert line.replace("\\|", "").count("|") == 5
    assert md_cell("a|b\nc") == "a\\|b c"


def test_deterministic(full_run, rendered, tmp_path):
    path, html = rendered
    again = build_report(full_run, ReportConfig(progress=False), tmp_path / "again.html")
    assert again.read_bytes() == path.read_bytes()
    assert (tmp_path / "summary.json").read_bytes() == (path.parent / "summary.json").read_bytes()


def test_missing_stages_are_reported(tmp_path, kodak, imagenet):
    run = build_run(tmp_path, kodak, imagenet, stages=("index",))
    out = build_report(run, ReportConfig(progress=False), tmp_path / "o" / "report.html")
    text = "".join(parse(out.read_text(encoding="utf-8")).text)
    assert "Not in this run" in text and "dedup/" in text and "probe/" in text
    assert "No probe results in this run." in text and "No dedup in this run." in text
    summary = json.loads((out.parent / "summary.json").read_text())
    assert summary["stages"] == {"index": "ok", "dedup": "missing", "probe": "missing"}
    # caption duplication still comes from the index alone
    assert summary["index"]["max_caption_repeats"] == 3

    # a corrupt probe table is reported as unreadable, the rest still renders
    (run / "probe").mkdir()
    (run / "probe" / "results.parquet").write_bytes(b"not parquet")
    out = build_report(run, ReportConfig(progress=False), tmp_path / "o2" / "report.html")
    text = "".join(parse(out.read_text(encoding="utf-8")).text)
    assert "probe/results.parquet: unreadable" in text


def test_empty_run_and_cli(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(empty), "--set", "report.progress=false"]) == 0
    out = tmp_path / "reports" / "empty-run" / "report.html"
    assert out.exists() and (out.parent / "summary.md").exists()
    assert "index/index.json" in out.read_text(encoding="utf-8")
    assert main(["report", str(tmp_path / "nope"), "--set", "report.progress=false"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_real_dedup_run(tmp_path, kodak, imagenet):
    """The report on the dedup stage's own outputs (not hand-written ones)."""
    from auditor.config import load_config
    from auditor.dedup.runner import run_dedup

    run = build_run(tmp_path, kodak, imagenet, stages=("index",))
    run_dedup(run, load_config(overrides=["dedup.progress=false"]))
    out = build_report(run, ReportConfig(progress=False), tmp_path / "o" / "report.html")
    html = out.read_text(encoding="utf-8")
    doc = parse(html)
    assert set(t for t, _ in doc.tags) <= ALLOWED_TAGS
    text = "".join(doc.text)
    summary = json.loads((out.parent / "summary.json").read_text())
    d = summary["dedup"]
    # kodak01 and its two JPEG re-encodes are one cluster; every sample is in the manifest
    assert d["n_samples"] == 8 and d["max_cluster_size"] == 3 and d["n_duplicate_clusters"] == 1
    assert d["duplicate_rate"] == pytest.approx(2 / 8)
    assert "cluster 0" in text and "3 images" in text
    # three member thumbnails of the cluster, from the dataset through the index's reader
    srcs = [dict(a)["src"] for t, a in doc.tags if t == "img"]
    assert sum(s.startswith("data:image/jpeg") for s in srcs) >= 3
    # the caption table comes from dedup/captions.parquet (with the clusters column)
    assert "image clusters" in text and HOSTILE[0] in text


# --- judging by eye: display sizes, columns, title, no local paths ---------------------------------------------


class _Tables(HTMLParser):
    """Every <table> as rows of (tag, text) cells, and every <img> with its attributes, in document order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[tuple[str, str]]]] = []
        self.imgs: list[dict] = []
        self.figcaptions: list[str] = []
        self._cell = None
        self._cap = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = [tag, ""]
        elif tag == "img":
            self.imgs.append(dict(attrs))
            if self._cell is not None:
                self._cell[1] += "[img]"
        elif tag == "figcaption":
            self._cap = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append((self._cell[0], self._cell[1].strip()))
            self._cell = None
        elif tag == "figcaption" and self._cap is not None:
            self.figcaptions.append(self._cap)
            self._cap = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data
        if self._cap is not None:
            self._cap += data


def tables_of(html: str) -> _Tables:
    t = _Tables()
    t.feed(html)
    t.close()
    return t


def _decoded(src: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    im.load()
    return im


def _img_by_alt(doc: _Tables, alt: str) -> int:
    return next(i for i, a in enumerate(doc.imgs) if a.get("alt") == alt)


def test_generations_shown_at_the_training_images_size(rendered):
    """A 32-px generation is shown as large as the training thumbnail beside it, enlarged with nearest-neighbour
    (every source pixel a uniform 5x5 block, and image-rendering: pixelated), with its native size noted."""
    _, html = rendered
    doc = tables_of(html)
    i = _img_by_alt(doc, "other_0.png")
    gen, train = doc.imgs[i], doc.imgs[i + 1]
    assert train["alt"] == "kodak02.png"                      # the pair: generation, then its training image
    assert int(gen["width"]) == int(train["width"]) == ReportConfig().thumbnail_px == 160
    assert (int(gen["height"]), int(train["height"])) == (160, 107)
    assert "px" in gen["class"].split() and "class" not in train  # only enlarged images are pixelated
    assert "image-rendering: pixelated" in html
    im = np.asarray(_decoded(gen["src"]).convert("RGB"))
    assert im.shape == (160, 160, 3) and gen["src"].startswith("data:image/png")  # lossless: no JPEG blur
    blocks = im.reshape(32, 5, 32, 5, 3)
    assert (blocks == blocks[:, :1, :, :1, :]).all()          # nearest-neighbour, not smoothed
    caps = " ".join(doc.figcaptions)
    assert "32\u00d732 px, shown \u00d75" in caps               # native size noted under the generation
    assert "768\u00d7512 px" in caps                           # and under the training image

    # the probe's evidence pair (two 32-px halves) is enlarged so each half fills the same 160-px box
    j = _img_by_alt(doc, "exact_seed0_vs_kodak01.png")
    ev = doc.imgs[j]
    assert (int(ev["width"]), int(ev["height"])) == (360, 160) and "px" in ev["class"].split()
    assert "72\u00d732 px, shown \u00d75" in caps
    # its caption is the short file name; the full path is in the title attribute, not broken mid-word
    assert 'title="probe/evidence/exact_seed0_vs_kodak01.png"' in html
    assert "overflow-wrap: anywhere" not in html.split("<style>")[1].split("figcaption")[0].split("figure")[-1]


def _columns_with_values(table: list[list[tuple[str, str]]]) -> list[bool]:
    head = table[0]
    body = [r for r in table[1:] if r]
    return [any(j < len(r) and r[j][1] not in ("", "\u2013") for r in body) for j in range(len(head))]


def _column_tables(html: str) -> list[list[list[tuple[str, str]]]]:
    """Tables with a header row (all th) and body rows: key/value tables (th beside td) are not column tables."""
    return [t for t in tables_of(html).tables if len(t) > 1 and t[0] and all(c[0] == "th" for c in t[0])]


def test_no_empty_columns(full_run, rendered, tmp_path):
    _, html = rendered
    for t in _column_tables(html):
        assert all(_columns_with_values(t)), [c[1] for c in t[0]]
    # a run without a white-box screen and without a copy descriptor (the demo's): those columns are left out
    run = tmp_path / "run"
    import shutil

    shutil.copytree(full_run, run)
    res = pd.read_parquet(run / "probe" / "results.parquet")
    res["whitebox_score"] = np.nan
    res["max_copy_similarity"] = np.nan
    write_parquet(run / "probe" / "results.parquet", res)
    gens = pd.read_parquet(run / "probe" / "generations.parquet")
    gens["copy_similarity"] = np.nan
    write_parquet(run / "probe" / "generations.parquet", gens)
    html2 = build_report(run, ReportConfig(progress=False), tmp_path / "o" / "report.html").read_text("utf-8")
    heads = {c[1] for t in _column_tables(html2) for c in t[0]}
    assert "white-box score" not in heads and "max copy sim" not in heads
    assert {"duplicates", "min tiled L2", "closest training image"} <= heads
    assert "copy sim" not in "".join(tables_of(html2).figcaptions)
    for t in _column_tables(html2):
        assert all(_columns_with_values(t)), [c[1] for c in t[0]]
    # the caption table built from the index alone has no "image clusters" column (dedup did not count them)
    assert "image clusters" not in heads


def test_title_names_dataset_and_model(rendered):
    path, html = rendered
    title = re.search(r"<title>(.*?)</title>", html, re.S).group(1)
    h1 = "".join(parse(html.split("<h1>", 1)[1].split("</h1>", 1)[0]).text)
    for t in (title, h1):
        assert "kodak-set" in t and "sd-tiny-v1" in t, t
    summary = json.loads((path.parent / "summary.json").read_text())
    assert summary["title"] == "dataset kodak-set, model sd-tiny-v1"
    assert summary["index"]["dataset"] == "kodak-set" and summary["probe"]["model"] == "sd-tiny-v1"
    md = (path.parent / "summary.md").read_text(encoding="utf-8")
    assert md.splitlines()[0] == "## auditor report: dataset kodak-set, model sd-tiny-v1"


def _local_paths(text: str, extra: tuple[str, ...] = ()) -> list[str]:
    text = DATA_URI.sub("data:", text)  # base64 may spell "/tmp" by chance
    return [r for r in LOCAL_ROOTS + extra if r in text]


def test_outputs_hold_no_local_path(full_run, rendered):
    """index.json, the probe provenance, the dedup summary and an error text of the run hold absolute paths;
    none of them reaches report.html, summary.md or summary.json."""
    path, _ = rendered
    planted = (full_run / "index" / "index.json").read_text() + (full_run / "probe" / "provenance.json").read_text()
    roots = (str(full_run.resolve()), str(full_run.resolve().parent.parent))
    assert any(r in planted for r in roots)  # the inputs do hold them
    for name in ("report.html", "summary.md", "summary.json"):
        text = (path.parent / name).read_text(encoding="utf-8")
        assert not _local_paths(text, roots), (name, _local_paths(text, roots))
    summary = json.loads((path.parent / "summary.json").read_text())
    assert summary["index"]["dataset_root"] == "kodak-set"
    html = path.read_text(encoding="utf-8")
    assert "sd-tiny-v1/unet/diffusion_pytorch_model.safetensors" in html  # the error keeps what it names
    assert "Full report: report.html" in (path.parent / "summary.md").read_text(encoding="utf-8")


def test_shipped_example_is_clean_and_current():
    """reports/example/ is what a reader sees first: no local path of the machine it was made on, and made by
    the current report (title naming the dataset and model, enlarged generations pixelated)."""
    ex = REPO / "reports" / "example"
    for name in ("summary.md", "summary.json", "report.html"):
        text = (ex / name).read_text(encoding="utf-8")
        assert not _local_paths(text), (name, _local_paths(text))
    html = (ex / "report.html").read_text(encoding="utf-8")
    title = re.search(r"<title>(.*?)</title>", html, re.S).group(1)
    assert "dataset" in title and "model" in title and title != "auditor report: run"
    assert 'class="px"' in html and "image-rendering: pixelated" in html
    for t in _column_tables(html):
        assert all(_columns_with_values(t)), [c[1] for c in t[0]]


def test_log_count_ticks_are_integers():
    from auditor.report.plots import log_count_ticks

    assert log_count_ticks(148) == [1, 2, 5, 10, 20, 50, 100, 200]
    assert log_count_ticks(100) == [1, 2, 5, 10, 20, 50, 100]
    assert log_count_ticks(3_000_000) == [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000]
