"""The training images a caption's generations are compared with: a ``--prompts`` row's own reference image first
(:mod:`auditor.probe.prompt_refs`), then the caption's cluster (representative first), every other risk row
prompting the same caption and every indexed image carrying it; their loaded images (cached), index embeddings
and where each came from (``reference_source``: ``prompt_file:key|url|path`` or ``caption``)."""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import pandas as pd
from PIL import Image

from ..utils import ErrorRecord, caption_hash

log = logging.getLogger(__name__)


class References:
    def __init__(self, store, manifest: Optional[pd.DataFrame], risk: pd.DataFrame, max_references: int,
                 errors: list[ErrorRecord]):
        self.store = store
        self.manifest = manifest
        self.risk = risk
        self.max_references = max_references
        self.errors = errors
        self.copy = None  # CopyDescriptorDetector, set by the runner when available
        self.prompt_refs = None  # PromptReferences of a --prompts file, set by the runner
        self._table: Optional[pd.DataFrame] = None
        self._cache: dict[tuple[str, str], Optional[Image.Image]] = {}
        self._pos: Optional[dict] = None
        self._emb: Optional[np.ndarray] = None
        self._last_key = None
        self._last_val = None

    def table(self) -> pd.DataFrame:
        if self._table is None:
            if self.store is None:
                self._table = pd.DataFrame(columns=["row", "key", "shard", "caption", "caption_hash"])
            else:
                self._table = self.store.table(columns=["key", "shard", "caption", "caption_hash"])
        return self._table

    def members(self, row) -> list[tuple[str, str]]:
        """(key, shard) of the training images of the caption's cluster, representative first."""
        refs: list[tuple[str, str]] = []
        if self.manifest is not None and "cluster_id" in self.manifest:
            m = self.manifest[self.manifest["cluster_id"] == row["cluster_id"]].copy()
            if len(m):
                m["_rep"] = (m["key"] == row.get("representative_key")) & (m["shard"] == row.get("representative_shard"))
                if "is_representative" in m:
                    m["_rep"] |= m["is_representative"].fillna(False).astype(bool)
                sim = m["similarity_to_representative"] if "similarity_to_representative" in m else 0.0
                m["_sim"] = pd.to_numeric(sim, errors="coerce").fillna(-1.0) if not np.isscalar(sim) else sim
                m = m.sort_values(["_rep", "_sim", "shard", "key"], ascending=[False, False, True, True])
                refs = list(zip(m["key"].astype(str), m["shard"].astype(str)))
        rep = (str(row.get("representative_key")), str(row.get("representative_shard")))
        if rep[0] not in ("None", "nan") and rep not in refs:
            refs.insert(0, rep)
        # other risk rows prompting the same caption (caption duplicated across different images)
        if "caption" in self.risk:
            hashes = self.risk["caption_hash"] if "caption_hash" in self.risk else self.risk["caption"].map(caption_hash)
            same = self.risk[(hashes == caption_hash(row.get("caption"))) & (self.risk["cluster_id"] != row["cluster_id"])]
            for r in same.itertuples():
                ref = (str(r.representative_key), str(r.representative_shard))
                if ref not in refs:
                    refs.append(ref)
        # every training image carrying the caption, in any cluster: a group split by the chaining guard into a
        # main cluster and a sub-cluster of its crops shares the captions; the original must be a reference too
        t = self.table()
        if len(t) and row.get("caption") is not None:
            same = t[t["caption_hash"] == caption_hash(row.get("caption"))].sort_values(["shard", "key"])
            for k, s in zip(same["key"].astype(str), same["shard"].astype(str)):
                if (k, s) not in refs:
                    refs.append((k, s))
        return refs[: self.max_references]

    def load(self, key: str, shard: str) -> Optional[Image.Image]:
        k = (key, shard)
        if k not in self._cache:
            img = None
            if self.store is not None:
                try:
                    img = self.store.load_image(shard, key).convert("RGB")
                except Exception as exc:  # noqa: BLE001 - recorded, the caption is still probed
                    self.errors.append(ErrorRecord(key, shard, "probe.reference", f"{type(exc).__name__}: {exc}"))
            if len(self._cache) > 512:
                self._cache.clear()
            self._cache[k] = img
        return self._cache[k]

    def embeddings(self, refs: list[tuple[str, str]], images: list[Image.Image]) -> np.ndarray:
        """Stored index embeddings of the references (embedded now when missing)."""
        if self._pos is None:
            t = self.table()
            self._pos = {(k, s): int(r) for k, s, r in zip(t["key"].astype(str), t["shard"].astype(str), t["row"])}
            self._emb = self.store.embeddings() if self.store is not None else np.zeros((0, 0))
        pos, emb = self._pos, self._emb
        out = []
        missing = []
        for i, ks in enumerate(refs):
            r = pos.get(ks)
            if r is not None and r < len(emb):
                out.append(np.asarray(emb[r], dtype=np.float32))
            else:
                out.append(None)
                missing.append(i)
        if missing:
            new = self.copy.embed_fn([images[i] for i in missing])
            for i, v in zip(missing, new):
                out[i] = v
        return np.stack(out) if out else np.zeros((0, 1), dtype=np.float32)

    def resolve(self, pairs: list[tuple[str, str]]) -> list[tuple]:
        """(key, shard, image, index embedding or None) of training images found by retrieval; unloadable ones
        are left out (and recorded)."""
        got = [(k, s, self.load(k, s)) for k, s in pairs]
        got = [g for g in got if g[2] is not None]
        if not got:
            return []
        emb = self.embeddings([(k, s) for k, s, _ in got], [im for _, _, im in got]) if self.copy is not None else None
        return [(k, s, im, emb[i] if emb is not None else None) for i, (k, s, im) in enumerate(got)]

    def of(self, row):
        """(refs, images, embeddings or None) of a risk row; the last one is cached (screen then confirm)."""
        return self._of(row)[:3]

    def sources(self, row) -> list[str]:
        """Where each of ``of(row)``'s references came from: ``prompt_file:key|url|path`` or ``caption``."""
        return self._of(row)[3]

    def _of(self, row):
        key = ("refs", row["cluster_id"])
        if self._last_key == key:
            return self._last_val
        refs, imgs, srcs = [], [], []
        pr = None
        if self.prompt_refs is not None and row.get("reference") is not None:
            pr = self.prompt_refs.get(row.get("reference"), row["cluster_id"])
        if pr is not None:  # the prompts file's reference first, ahead of the index's images of the caption
            refs, imgs, srcs = [pr.ident], [pr.image], [pr.source]
        for k, s in self.members(row):
            if (k, s) in refs:
                continue
            im = self.load(k, s)
            if im is not None:
                refs.append((k, s))
                imgs.append(im)
                srcs.append("caption")
        n = self.max_references
        refs, imgs, srcs = refs[:n], imgs[:n], srcs[:n]
        emb = self.embeddings(refs, imgs) if (self.copy is not None and refs) else None
        self._last_key, self._last_val = key, (refs, imgs, emb, srcs)
        return self._last_val
