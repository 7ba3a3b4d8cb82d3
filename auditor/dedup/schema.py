"""Arrow schemas of the dedup stage's tables (the contract later stages read; typed even when empty)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from ..rundir import CAPTIONS, CLUSTERS, MANIFEST, REMOVAL_IDS, RISK

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("shard", pa.string()),
    ("cluster_id", pa.int64()),
    ("cluster_size", pa.int64()),
    ("is_representative", pa.bool_()),
    ("keep", pa.bool_()),
    ("reason", pa.string()),            # exact_bytes | exact_pixels | phash | dhash | embedding | ''
    ("similarity_to_representative", pa.float64()),
    ("caption_dup_count", pa.int64()),  # other samples carrying the same normalised caption
    # join columns: to the img2dataset url list, the stored bytes, the file (folder and files layouts), the caption
    ("url", pa.string()),
    ("sha256", pa.string()),
    ("path", pa.string()),              # the image file (URL or local path) for folder/files layouts, else null
    ("caption_hash", pa.string()),
])

# NeMo Curator's removal list shape: one row per sample to remove, ``id`` = the sample's key
REMOVAL_IDS_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("shard", pa.string()),
    ("cluster_id", pa.int64()),
    ("reason", pa.string()),
])

# img2dataset's --url_list (--input_format parquet --url_col url --caption_col caption): the kept samples that
# have a url; the carried columns follow (pass them as --save_additional_columns), typed as in the index
KEEP_URLS_BASE = pa.schema([
    ("url", pa.string()),
    ("caption", pa.string()),
    ("sha256", pa.string()),            # img2dataset --verify_hash '["sha256","sha256"]' checks the download
])

CLUSTERS_SCHEMA = pa.schema([
    ("cluster_id", pa.int64()),
    ("size", pa.int64()),
    ("representative_key", pa.string()),
    ("representative_shard", pa.string()),
    ("n_captions", pa.int64()),          # distinct non-empty normalised captions among the members
    ("is_placeholder", pa.bool_()),
    ("placeholder_why", pa.string()),    # tiny | flat | uniform | ''
    ("exact_members", pa.int64()),       # members joined to the representative by exact bytes or pixels
    ("reasons", pa.string()),            # the members' reasons, comma-separated, sorted
])

CAPTIONS_SCHEMA = pa.schema([
    ("caption_hash", pa.string()),
    ("caption", pa.string()),
    ("count", pa.int64()),
    ("n_clusters", pa.int64()),
])

RISK_SCHEMA = pa.schema([
    ("rank", pa.int64()),
    ("cluster_id", pa.int64()),
    ("cluster_size", pa.int64()),
    ("caption", pa.string()),
    ("caption_hash", pa.string()),
    ("caption_count", pa.int64()),
    ("n_captions", pa.int64()),
    ("representative_key", pa.string()),
    ("representative_shard", pa.string()),
    ("score", pa.float64()),
    ("is_placeholder", pa.bool_()),
])

AGAINST_SCHEMA = pa.schema(list(MANIFEST_SCHEMA) + [
    ("matched_key", pa.string()),
    ("matched_shard", pa.string()),
    ("matched_run", pa.string()),
    ("match_reason", pa.string()),
    ("similarity", pa.float64()),
    ("n_matched_groups", pa.int64()),
])

SCHEMAS = {
    MANIFEST: MANIFEST_SCHEMA,
    CLUSTERS: CLUSTERS_SCHEMA,
    CAPTIONS: CAPTIONS_SCHEMA,
    RISK: RISK_SCHEMA,
    REMOVAL_IDS: REMOVAL_IDS_SCHEMA,
}


def to_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """``frame`` (columns in any order, extra columns an error) as an arrow table of ``schema``."""
    missing = set(schema.names) ^ set(frame.columns)
    if missing:
        raise ValueError(f"columns do not match the schema: {sorted(missing)}")
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
