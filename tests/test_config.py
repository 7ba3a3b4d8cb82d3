"""The one typed config: the shipped auditor/configs/*.yaml stay equal to / valid for the code, overrides parse,
mistakes are one-line ConfigErrors, the CLI lists stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from auditor.cli import build_parser, main
from auditor.config import CONFIG_DIR, AuditorConfig, load_config, parse_overrides, resolve_config_file
from auditor.errors import ConfigError

CONFIGS = CONFIG_DIR  # shipped inside the package (auditor/configs); the top-level configs/ links to it


def test_default_yaml_equals_code_defaults():
    data = yaml.safe_load((CONFIGS / "default.yaml").read_text(encoding="utf-8"))
    from auditor.lab.config import LabRunConfig  # every section: the stages' and the lab's extension

    assert data == LabRunConfig().model_dump(mode="json"), \
        "regenerate auditor/configs/default.yaml from LabRunConfig()"


def test_configs_ship_inside_the_package_and_load_by_name(tmp_path, monkeypatch):
    import auditor

    assert CONFIGS.parent == Path(auditor.__file__).resolve().parent
    assert {"default", "carlini2023", "policy"} <= {p.stem for p in CONFIGS.glob("*.yaml")}
    monkeypatch.chdir(tmp_path)  # a name works from any folder
    assert resolve_config_file("carlini2023") == CONFIGS / "carlini2023.yaml"
    assert resolve_config_file("default.yaml") == CONFIGS / "default.yaml"
    assert load_config("carlini2023").probe.confirm_generations == 500
    mine = tmp_path / "carlini2023"  # a file of that name in the current folder wins over the shipped one
    mine.write_text("seed: 7\n")
    assert load_config("carlini2023").seed == 7
    with pytest.raises(ConfigError, match="not found"):
        resolve_config_file("no-such-config")


def test_config_mistakes_are_one_line_errors_naming_the_key(tmp_path):
    cases = {
        ("index.wrokers=4",): "index.wrokers: unknown key (did you mean index.workers?)",
        ("dedup.phash_max_distanse=8",): "dedup.phash_max_distanse: unknown key (did you mean dedup.phash_max_distance?)",
        ("index.embedder.nam=x",): "index.embedder.nam: unknown key (did you mean index.embedder.name?)",
        ("index.workers=many",): "index.workers: Input should be a valid integer",
        ("index.workers",): "--set expects dotted.key=value, got 'index.workers'",
    }
    for overrides, text in cases.items():
        with pytest.raises(ConfigError) as e:
            load_config(None, list(overrides))
        msg = str(e.value)
        assert msg.startswith("bad configuration: ") and text in msg and "\n" not in msg, msg
    bad = tmp_path / "bad.yaml"
    bad.write_text("index:\n  workers: [1\n  chunk_size: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+: invalid YAML") as e:
        load_config(bad)
    assert "\n" not in str(e.value)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(tmp_path / "list.yaml")


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
    assert search_options(d) == {"nlist": 64, "nprobe": 16, "probe_margin": 0.15, "probe_min": 4,
                                 "threads": 2}
    a = search_fingerprint(_Store(), d, 0, True)
    b = search_fingerprint(_Store(), d.model_copy(update={"nprobe": 8}), 0, True)
    c = search_fingerprint(_Store(), d.model_copy(update={"search_threads": 1}), 0, True)
    m = search_fingerprint(_Store(), d.model_copy(update={"probe_margin": None}), 0, True)
    assert a != b and a == c and a != m  # nprobe and the probe rule change the pairs found; thread count does not
