"""The one typed config: configs/*.yaml stay equal to / valid for the code, overrides parse, CLI lists stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from auditor.cli import build_parser, main
from auditor.config import AuditorConfig, load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_default_yaml_equals_code_defaults():
    data = yaml.safe_load((CONFIGS / "default.yaml").read_text(encoding="utf-8"))
    assert data == AuditorConfig().model_dump(mode="json"), "regenerate configs/default.yaml from AuditorConfig()"


@pytest.mark.parametrize("name", ["default.yaml", "carlini2023.yaml"])
def test_config_files_validate(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, AuditorConfig)


def test_carlini_preset_is_the_papers_setting():
    c = load_config(CONFIGS / "carlini2023.yaml")
    assert (c.probe.confirm_generations, c.probe.tiled_l2_threshold, c.probe.clique_k, c.probe.tile_grid) == \
        (500, 0.15, 10, 4)


def test_overrides_are_typed_and_strict(tmp_path):
    assert parse_overrides(["index.workers=4", "index.embedder.name=open_clip", "probe.variants=[exact, prefix]"]) == \
        {"index": {"workers": 4, "embedder": {"name": "open_clip"}}, "probe": {"variants": ["exact", "prefix"]}}
    f = tmp_path / "c.yaml"
    f.write_text("dedup:\n  phash_max_distance: 6\n")
    cfg = load_config(f, ["dedup.phash_max_distance=8", "seed=3"])
    assert cfg.dedup.phash_max_distance == 8 and cfg.seed == 3
    with pytest.raises(Exception):
        load_config(None, ["dedup.phash_max_distanse=8"])  # a typo is an error, never silently ignored
    with pytest.raises(ValueError):
        parse_overrides(["no-equals-sign"])


def test_cli_lists_every_stage(capsys):
    parser = build_parser()
    names = set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001
    assert {"index", "dedup", "apply-manifest", "probe", "report", "gate", "guard", "demo", "lab"} <= names
    assert main([]) == 2  # no command: help, exit 2


def test_dedup_search_knobs_reach_faiss_and_the_state_fingerprint():
    from auditor.dedup.config import DedupConfig
    from auditor.dedup.runner import search_fingerprint, search_options

    class _Store:
        embedder = {"name": "sscd", "dim": 512}

    d = DedupConfig(search="ivf", nlist=64, nprobe=16, search_threads=2)
    assert search_options(d) == {"nlist": 64, "nprobe": 16, "threads": 2}
    a = search_fingerprint(_Store(), d, 0, True)
    b = search_fingerprint(_Store(), d.model_copy(update={"nprobe": 8}), 0, True)
    c = search_fingerprint(_Store(), d.model_copy(update={"search_threads": 1}), 0, True)
    assert a != b and a == c  # nprobe changes the pairs found; thread count does not
