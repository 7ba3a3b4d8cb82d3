"""The Python API: every stage as one typed call, the same work as its command.

    >>> from auditor import index, dedup, probe, report, gate, Guard, load_config   # doctest: +SKIP

``auditor.index``, ``auditor.dedup``, ``auditor.probe``, ``auditor.report`` and ``auditor.gate`` are the stages'
packages *and* callables: each package module is made callable (:func:`make_callable`), so
``auditor.index("photos", "runs/photos")`` runs the stage while ``auditor.index.runner`` stays importable.
Nothing heavy is imported until a stage runs (``import auditor`` imports neither torch nor faiss).

``config`` is, everywhere: None (the defaults), a YAML path or shipped name (``"carlini2023"``), an
:class:`~auditor.config.AuditorConfig` (e.g. from :func:`~auditor.config.load_config`), or the stage's own
section (``IndexConfig``, ``DedupConfig``, ...); ``overrides`` are ``--set`` style ``"a.b=c"`` strings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from .callmodule import make_module_callable

if TYPE_CHECKING:  # typing only: importing these costs pandas/pyarrow
    import pandas as pd

    from .config import AuditorConfig
    from .index.store import IndexStore

PathLike = Union[str, os.PathLike]
ConfigLike = Union[None, str, os.PathLike, "AuditorConfig", Any]


def _config(config: ConfigLike, overrides: Sequence[str], section: str):
    """(AuditorConfig, the stage's section) of ``config`` + ``overrides``."""
    from pydantic import BaseModel

    from .config import AuditorConfig, deep_merge, load_config, parse_overrides, validate_config

    if config is None or isinstance(config, (str, os.PathLike)):
        cfg = load_config(config, overrides)
    elif isinstance(config, AuditorConfig):
        cfg = validate_config(deep_merge(config.model_dump(), parse_overrides(overrides)))
    elif isinstance(config, BaseModel):  # a stage section: IndexConfig, DedupConfig, ProbeConfig, ReportConfig
        cfg = validate_config(deep_merge({section: config.model_dump()}, parse_overrides(overrides)))
    else:
        raise TypeError(f"config must be None, a path, an AuditorConfig or a {section} section, not "
                        f"{type(config).__name__}")
    return cfg, getattr(cfg, section)


def index(dataset: PathLike, run_dir: PathLike, config: ConfigLike = None, overrides: Sequence[str] = (),
          embeddings: Optional[str] = None) -> "IndexStore":
    """Index a dataset (img2dataset webdataset / parquet / files output, or a plain image folder; a path or an
    fsspec URL) into ``run_dir/index``: hashes, and embeddings of ``index.embedder`` or of ``embeddings``.

    Args:
        dataset: the dataset root.
        run_dir: the run folder (created; resumes an interrupted run with the same config).
        config: see the module docstring; ``overrides`` e.g. ``["index.embedder.name=none"]``.
        embeddings: precomputed embeddings (clip-retrieval ``img_emb``/``metadata`` folder, NeMo parquet, .npy +
            ids), attached instead of running a model (``auditor index --embeddings``).

    Returns:
        The :class:`~auditor.index.store.IndexStore` of the run.

    Example:
        >>> from auditor import index
        >>> store = index("photos/", "runs/photos", overrides=["index.embedder.name=none"])  # doctest: +SKIP
        >>> store.table(columns=["key", "phash"]).head()                                     # doctest: +SKIP
    """
    from .index.runner import run_index

    if embeddings is not None:
        overrides = [*overrides, "index.embedder.name=none"]
    _, icfg = _config(config, overrides, "index")
    store = run_index(str(dataset), run_dir, icfg)
    if embeddings is not None:
        from .index.precomputed import attach_embeddings

        store = attach_embeddings(run_dir, embeddings)
    return store


def dedup(run_dir: PathLike, config: ConfigLike = None, overrides: Sequence[str] = (),
          against: Sequence[PathLike] = (), full: bool = False) -> dict:
    """Cluster the duplicates of ``run_dir/index``; writes ``run_dir/dedup`` (manifest, clusters, captions,
    risk, keep_urls, removal_ids) and returns the summary. ``against``: other indexed runs (an eval set) whose
    duplicates are listed in ``dedup/against_<name>.parquet``.

    Example:
        >>> from auditor import dedup
        >>> dedup("runs/photos", overrides=["dedup.keep=column:aesthetic"])["kept"]   # doctest: +SKIP
        912
    """
    from .dedup.against import run_against
    from .dedup.runner import run_dedup

    cfg, dcfg = _config(config, overrides, "dedup")
    summary = run_dedup(run_dir, dcfg, full=full, seed=cfg.seed)
    for other in against:
        run_against(run_dir, other, dcfg, seed=cfg.seed)
    return summary


def apply_manifest(run_dir: PathLike, out: PathLike, output_format: str = "webdataset", shard_size: int = 10_000,
                   drop_against: Optional[Sequence[str]] = None, progress: bool = True) -> dict:
    """Write the kept samples losslessly to ``out`` (folder or fsspec URL); see :mod:`auditor.dedup.apply`.

    Example:
        >>> from auditor.api import apply_manifest
        >>> apply_manifest("runs/photos", "memory://dedup", output_format="parquet")["written"]  # doctest: +SKIP
        912
    """
    from .dedup.apply import apply_manifest as run_apply

    return run_apply(run_dir, out, shard_size=shard_size, progress=progress, output_format=output_format,
                     drop_against=drop_against)


def probe(run_dir: PathLike, config: ConfigLike = None, overrides: Sequence[str] = (),
          generator: Any = None) -> "pd.DataFrame":
    """Probe the model (``probe.generator``, or a ready ``generator``) with the riskiest captions of
    ``run_dir/dedup``; writes ``run_dir/probe`` and returns its results table.

    Example:
        >>> from auditor import probe
        >>> probe("runs/photos", "carlini2023", ["probe.top_n=20"]).verdict.value_counts()  # doctest: +SKIP
    """
    from .probe.runner import run_probe

    _, pcfg = _config(config, overrides, "probe")
    return run_probe(run_dir, pcfg, generator=generator)


def report(run_dir: PathLike, config: ConfigLike = None, overrides: Sequence[str] = (),
           out: Optional[PathLike] = None) -> Path:
    """Write the self-contained HTML report (+ summary.md / summary.json); returns the HTML path.

    Example:
        >>> from auditor import report
        >>> report("runs/photos")                 # doctest: +SKIP
        PosixPath('reports/photos/report.html')
    """
    from .report.render import build_report

    _, rcfg = _config(config, overrides, "report")
    return build_report(run_dir, rcfg, out)


def gate(run_dir: PathLike, policy: Union[PathLike, Any] = "policy"):
    """Evaluate a release policy (a YAML path, a shipped name, or a :class:`~auditor.gate.Policy`) on a run;
    returns an :class:`auditor.gate.GateVerdict` (:func:`auditor.gate.check`).

    Example:
        >>> from auditor import gate
        >>> v = gate("runs/photos", "policy")    # doctest: +SKIP
        >>> v.passed, v.code                      # doctest: +SKIP
        (True, 0)
    """
    from .gate import check

    return check(run_dir, policy)


def make_callable(module_name: str, api_name: str) -> None:
    """Make ``sys.modules[module_name]`` callable as :func:`auditor.api.<api_name>` (with its signature/docs)."""
    make_module_callable(module_name, globals()[api_name], api_name)
