"""``--prompts`` files: the shipped memorized-prompts CSV as it is, other delimiters, JSONL and parquet."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from auditor.errors import UserError
from auditor.probe.prompts import load_prompts

SHIPPED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "prompts" / "memorized_laion_prompts.csv"


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
