"""Which risk rows the probe prompts: one probe per distinct prompt, references from every row sharing it."""

from __future__ import annotations

import pandas as pd

from auditor.probe.config import ProbeConfig
from auditor.probe.runner import ProbeRunner
from auditor.utils import caption_hash, write_parquet


def test_one_probe_per_prompt_with_references_from_every_row(tmp_path):
    caps = ["a red bus", "a red bus", "A red bus!", "a cat", "a dog"]
    risk = pd.DataFrame({
        "rank": [1, 2, 3, 4, 5], "cluster_id": [7, 3, 4, 5, 6], "cluster_size": [5, 1, 1, 1, 1],
        "caption": caps, "caption_hash": [caption_hash(c) for c in caps], "caption_count": [3, 3, 3, 2, 2],
        "n_captions": 1, "representative_key": ["k7", "k3", "k4", "k5", "k6"],
        "representative_shard": "00000", "score": 0.0, "is_placeholder": False,
    })
    manifest = pd.DataFrame({"key": ["k7", "m1", "m2", "k3", "k4", "k5", "k6"], "shard": "00000",
                             "cluster_id": [7, 7, 7, 3, 4, 5, 6], "is_representative": [1, 0, 0, 1, 1, 1, 1],
                             "similarity_to_representative": [1.0, 0.99, 0.98, 1, 1, 1, 1]})
    manifest["is_representative"] = manifest["is_representative"].astype(bool)
    write_parquet(tmp_path / "dedup" / "risk.parquet", risk)
    write_parquet(tmp_path / "dedup" / "manifest.parquet", manifest)
    runner = ProbeRunner(tmp_path, ProbeConfig(top_n=10))
    runner.load_inputs()
    sel = runner.selected()
    assert list(sel["caption"]) == ["a red bus", "a cat", "a dog"]  # "A red bus!" normalises to the same prompt
    refs = runner.members(sel.iloc[0])
    assert refs[:3] == [("k7", "00000"), ("m1", "00000"), ("m2", "00000")]
    assert {("k3", "00000"), ("k4", "00000")} <= set(refs)  # singletons with the same prompt are references too
    assert ("k5", "00000") not in refs


def test_references_include_every_image_with_the_caption_in_any_cluster():
    """Issue 15: a group split into a main cluster and a crop sub-cluster sharing its captions; the probe of the
    sub-cluster's caption must also compare with the main cluster's original."""
    from auditor.probe.references import References

    class _Store:
        def table(self, columns=None):
            return pd.DataFrame({"row": [0, 1, 2, 3], "key": ["orig", "crop1", "crop2", "other"],
                                 "shard": "00000", "caption": ["a red bus"] * 3 + ["a cat"],
                                 "caption_hash": [caption_hash("a red bus")] * 3 + [caption_hash("a cat")]})

    manifest = pd.DataFrame({"key": ["orig", "crop1", "crop2", "other"], "shard": "00000",
                             "cluster_id": [1, 2, 2, 3], "is_representative": [True, True, False, True]})
    risk = pd.DataFrame({"rank": [1], "cluster_id": [2], "cluster_size": [2], "caption": ["a red bus"],
                         "caption_hash": [caption_hash("a red bus")], "representative_key": ["crop1"],
                         "representative_shard": ["00000"]})
    refs = References(_Store(), manifest, risk, 32, []).members(risk.iloc[0])
    assert refs[:2] == [("crop1", "00000"), ("crop2", "00000")]
    assert ("orig", "00000") in refs and ("other", "00000") not in refs
