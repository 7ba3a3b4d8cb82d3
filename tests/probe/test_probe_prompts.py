"""``--prompts`` files: the shipped memorized-prompts CSV as it is, other delimiters, JSONL and parquet."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from auditor.errors import UserError
from auditor.probe.prompts import load_prompts

SHIPPED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "prompts" / "memorized_laion_prompts.csv"


def test_shipped_memorized_prompts_load_as_is():
    if not SHIPPED.exists():
        pytest.skip(f"{SHIPPED} absent")
    df = load_prompts(SHIPPED)
    raw = pd.read_csv(SHIPPED, sep=";")
    assert len(df) == raw["Caption"].str.strip().drop_duplicates().size and len(df) > 400
    assert df["caption"].iloc[0] == "The No Limits Business Woman Podcast"
    assert df["reference"].iloc[0].startswith("https://")
    assert set(df["label"]) <= {"VM", "TM", "none"} and {"VM", "TM"} <= set(df["label"])


def test_tsv_jsonl_parquet_and_errors(tmp_path):
    (tmp_path / "a.tsv").write_text("prompt\tlabel\na cat\tVM\na dog\tnone\n\t\n", encoding="utf-8")
    df = load_prompts(tmp_path / "a.tsv")
    assert list(df["caption"]) == ["a cat", "a dog"] and list(df["label"]) == ["VM", "none"]
    assert df["reference"].isna().all()
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"caption": c, "reference": r})
                                               for c, r in [("x", "k1"), ("y", "/p.jpg")]), encoding="utf-8")
    assert list(load_prompts(tmp_path / "b.jsonl")["reference"]) == ["k1", "/p.jpg"]
    pd.DataFrame({"text": ["u", "v"]}).to_parquet(tmp_path / "c.parquet")
    assert list(load_prompts(tmp_path / "c.parquet")["caption"]) == ["u", "v"]
    (tmp_path / "d.csv").write_text("foo,bar\n1,2\n", encoding="utf-8")
    with pytest.raises(UserError, match="no caption column"):
        load_prompts(tmp_path / "d.csv")
    (tmp_path / "e.csv").write_text("caption,label\na,XX\n", encoding="utf-8")
    with pytest.raises(UserError, match="label values"):
        load_prompts(tmp_path / "e.csv")


def stub_model(prompts, seeds, first="", **params):
    """The same image for every seed of ``first`` (a memorized prompt, no training image), noise otherwise."""
    import numpy as np
    from PIL import Image

    out = []
    for p, s in zip(prompts, seeds):
        rng = np.random.default_rng(0 if p == first else 1000 + s)
        out.append(Image.fromarray(rng.uniform(0, 255, (64, 64, 3)).astype(np.uint8)))
    return out


def test_probe_with_shipped_prompts_without_an_index(tmp_path):
    """`auditor probe RUN --prompts memorized_laion_prompts.csv` on an empty run folder with a stub generator."""
    if not SHIPPED.exists():
        pytest.skip(f"{SHIPPED} absent")
    from auditor.cli import main
    from auditor.probe.config import ProbeConfig  # noqa: F401 - the section the CLI fills

    first = load_prompts(SHIPPED)["caption"].iloc[0]
    run = tmp_path / "run"
    run.mkdir()
    rc = main(["probe", str(run), "--prompts", str(SHIPPED), "--generator", "python",
               "--callable", f"{__name__}:stub_model", "--top-n", "3", "--no-progress",
               "--set", f"probe.python.params={json.dumps({'first': first})}",
               "--set", "probe.screen_generations=3", "--set", "probe.confirm_generations=4",
               "--set", "probe.clique_k=3", "--set", "probe.steps=1",
               "--set", "probe.fetch_references=false"])  # hermetic: the CSV's LAION URLs are not fetched
    assert rc == 0
    res = pd.read_parquet(run / "probe" / "results.parquet")
    assert list(res["caption"].unique()) == list(load_prompts(SHIPPED)["caption"].head(3))
    by = res.groupby("caption")["verdict"].apply(set)
    assert "template" in by[first]  # a clique of identical generations with no training image
    assert all(v == {"none"} for c, v in by.items() if c != first)
