"""The probe's output records: the arrow schemas of ``results.parquet`` and ``generations.parquet`` (the
report/gate contract) and the probe folder's name and format version."""

from __future__ import annotations

import pyarrow as pa

from ..rundir import PROBE_DIR  # noqa: E402,F401 - the run folder layout lives in auditor/rundir.py
FORMAT_VERSION = 2  # 2: the fused verdict's columns

RESULT_SCHEMA = pa.schema([
    ("caption", pa.string()), ("variant", pa.string()), ("prompt", pa.string()), ("rank", pa.int64()),
    ("cluster_id", pa.int64()), ("cluster_size", pa.int64()), ("seeds", pa.list_(pa.int64())),
    ("n_generations", pa.int64()), ("unet_evals", pa.int64()), ("tier", pa.string()),
    ("whitebox_score", pa.float64()), ("whitebox_flag", pa.bool_()), ("screen_flag", pa.bool_()),
    ("max_copy_similarity", pa.float64()), ("min_tiled_l2", pa.float64()), ("largest_clique", pa.int64()),
    ("verbatim_count", pa.int64()), ("template_count", pa.int64()), ("verdict", pa.string()),
    ("reason", pa.string()), ("best_key", pa.string()), ("best_shard", pa.string()),
    ("best_distance", pa.float64()), ("evidence", pa.list_(pa.string())), ("n_errors", pa.int64()),
    ("error", pa.string()),
    # fused verdict (fusion.py): the strongest evidence over the generations; reference_source of best_key:
    # caption (an indexed image of the caption), retrieval (the whole index), prompt_file:key|url|path (--prompts)
    ("min_trimmed_l2", pa.float64()), ("min_phash_distance", pa.int64()), ("max_layout_similarity", pa.float64()),
    ("reference_source", pa.string()), ("retrieval_copies", pa.int64()), ("tile_rule_verbatim", pa.int64()),
])
RESULT_COLUMNS = [f.name for f in RESULT_SCHEMA]

GENERATION_SCHEMA = pa.schema([
    ("caption", pa.string()), ("variant", pa.string()), ("prompt", pa.string()), ("seed", pa.int64()),
    ("path", pa.string()), ("tiled_l2", pa.float64()), ("tile_fraction", pa.float64()),
    ("copy_similarity", pa.float64()), ("verdict", pa.string()), ("best_key", pa.string()),
    ("best_shard", pa.string()), ("unet_evals", pa.int64()), ("error", pa.string()),
    # the fused verdict's evidence (signals.py / fusion.py): tiled_l2 is the smallest over every reference
    # (Carlini's distance), the rest are of the pair the verdict names (best_key); tile_verdict = the plain rule
    ("trimmed_l2", pa.float64()), ("match_share", pa.float64()), ("phash_distance", pa.int64()),
    ("layout_similarity", pa.float64()), ("signals", pa.list_(pa.string())), ("reference_source", pa.string()),
    ("tile_verdict", pa.string()),
])
GENERATION_COLUMNS = [f.name for f in GENERATION_SCHEMA]


def results_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA) if rows else RESULT_SCHEMA.empty_table()


def generations_table(gens: list[dict]) -> pa.Table:
    if not gens:
        return GENERATION_SCHEMA.empty_table()
    return pa.Table.from_pylist([{k: g.get(k) for k in GENERATION_COLUMNS} for g in gens], schema=GENERATION_SCHEMA)
