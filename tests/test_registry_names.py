"""A backend's name lives in its registry (issue 16 item 8): the config's ``Literal`` equals the registry's names
(readers, embedders, generators, engines, dedup search strategies), argparse ``choices=`` come from the
registries, and the fingerprints' excluded keys come from the ``RUNTIME`` markers on the fields."""

from __future__ import annotations

from typing import get_args

import pytest

from auditor.dedup.config import DedupConfig
from auditor.index.config import EmbedderConfig, IndexConfig, ReaderConfig
from auditor.probe.config import ProbeConfig


def _literal(model, field: str) -> list[str]:
    return sorted(get_args(model.model_fields[field].annotation))


def test_literals_equal_the_registries():
    from auditor.dedup.search import SEARCH_METHODS
    from auditor.index.embedders import EMBEDDERS
    from auditor.index.engines import ENGINES
    from auditor.io import READERS
    from auditor.probe.generators import GENERATORS

    assert _literal(ReaderConfig, "layout") == sorted(["auto", *READERS.names()])
    assert _literal(EmbedderConfig, "name") == EMBEDDERS.names()
    assert _literal(IndexConfig, "engine") == ENGINES.names()
    assert _literal(ProbeConfig, "generator") == GENERATORS.names()
    assert _literal(DedupConfig, "search") == sorted(["auto", *SEARCH_METHODS.names()])


def _choices(command: str, flag: str) -> list[str]:
    from auditor.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # argparse keeps them here
    action = next(a for a in sub._actions if flag in a.option_strings)
    return sorted(action.choices)


@pytest.mark.parametrize("command, flag, model, field, extra", [
    ("index", "--layout", ReaderConfig, "layout", []),
    ("index", "--embedder", EmbedderConfig, "name", []),
    ("index", "--engine", IndexConfig, "engine", []),
    ("probe", "--generator", ProbeConfig, "generator", []),
])
def test_cli_choices_come_from_the_registries(command, flag, model, field, extra):
    assert _choices(command, flag) == _literal(model, field)


def test_runtime_markers_are_the_keys_a_resume_may_change():
    from auditor.rundir import runtime_keys

    assert set(runtime_keys(IndexConfig)) == {"workers", "chunk_size", "progress", "engine", "ray_address",
                                               "embedder.device", "embedder.batch_size", "embedder.threads"}
    assert set(runtime_keys(ProbeConfig)) == {"progress", "budget_unet_evals", "top_n", "diffusers.batch_size",
                                               "diffusers.device", "http.url", "http.concurrency", "http.timeout_s",
                                               "reference_timeout_s", "reference_concurrency"}  # as http's


def test_fingerprints_drop_exactly_the_marked_keys():
    from auditor.index.runner import fingerprint as index_fp
    from auditor.probe.config import fingerprint as probe_fp

    base = IndexConfig()
    runtime = base.model_copy(update={"workers": 7, "progress": False, "engine": "ray",
                                      "embedder": base.embedder.model_copy(update={"device": "cpu"})})
    assert index_fp(runtime) == index_fp(base)
    assert "workers" not in index_fp(base) and "device" not in index_fp(base)["embedder"]
    assert index_fp(base.model_copy(update={"gpu_decode": True})) != index_fp(base)

    p = ProbeConfig()
    moved = p.model_copy(update={"top_n": 99, "http": p.http.model_copy(update={"url": "http://h:1/g"})})
    assert probe_fp(moved) == probe_fp(p)
    assert probe_fp(p.model_copy(update={"steps": 10})) != probe_fp(p)
