"""lab.split_groups: a share of a group's copies are one heavy crop of its photo with the group's captions (the
sub-cluster benchmarks/bench_probe_recall.py needs); without it the dataset is the demo's."""

from __future__ import annotations

from PIL import Image

from auditor.lab.dataset import build_dataset, skimage_sources
from auditor.lab.train import tiled_l2, to_training_array


def test_split_group_has_heavy_crops_and_the_rest_is_unchanged(tmp_path):
    src = skimage_sources(8, 2, seed=0, max_side=128)
    plain = build_dataset(src, [20, 10], tmp_path / "plain", seed=0)
    split = build_dataset(src, [20, 10], tmp_path / "split", seed=0, split_groups=[0], heavy_crop_rate=0.4)
    heavy = split["transform"].str.startswith("heavy crop")
    assert set(split.loc[heavy, "group"]) == {0} and 3 <= heavy.sum() <= 15
    assert (split.loc[heavy, "copy_index"] > 0).all()  # the first copy stays the photo itself
    # one crop for the whole group, carrying the group's captions
    assert split.loc[heavy, "transform"].str.extract(r"^(heavy crop\([^)]*\))")[0].nunique() == 1
    assert set(split.loc[heavy, "caption"]) <= set(split.loc[split["group"] == 0, "caption"])
    orig = split[(split["group"] == 0) & (split["copy_index"] == 0)]["file"].iloc[0]
    ref = to_training_array(Image.open(tmp_path / "split" / "images" / orig), 32)
    crop = split.loc[heavy, "file"].iloc[0]
    assert tiled_l2(to_training_array(Image.open(tmp_path / "split" / "images" / crop), 32), ref) > 0.15
    # without split_groups the dataset is the demo's (no extra random draws), byte for byte
    again = build_dataset(src, [20, 10], tmp_path / "again", seed=0, split_groups=[])
    assert again.equals(plain)
    assert all((tmp_path / "again" / "images" / f).read_bytes() == (tmp_path / "plain" / "images" / f).read_bytes()
               for f in plain["file"])
