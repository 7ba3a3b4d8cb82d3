"""``ray`` engine: the index pipeline on a Ray cluster with Ray Data (``pip install 'auditor[ray]'``).

::

    driver: ray.data.from_items(pending shard numbers), one block per shard
      -> map_batches(_shard_stage)   CPU tasks, one shard each: the reader streams the shard, fixed chunks of
                                     ``chunk_size`` go through ``shard.process_chunk`` (decode + hashes + the
                                     embedder's CPU preprocessing); the preprocessed rows are cut into the shard's
                                     fixed embedding batches (``batch_size`` rows from row 0) as they come, and
                                     the shard's table rows follow as one ``meta`` row
      -> map_batches(_EmbedActor)    actors holding the embedder (``num_gpus=1`` each when the cluster has GPUs,
                                     one per GPU; else CPU actors), ``shard.embed_batch`` per batch
      -> driver: rows stream back (``iter_rows``); a shard whose meta row and every batch have arrived is joined
                 (``shard.apply_embeddings``) and written by ``shard.write_shard``, marker last.

The chunks, the batches and the functions are the local engine's, so the index folder is byte-identical to
``engine=local`` on the same input (on the same kind of device), and resume works the same (shards with a
``.done`` marker are not submitted). Payloads between stages are pickled Python objects made by these tasks
inside the cluster (never read from files).

``index.ray_address``: ``None`` starts a local cluster on this machine; ``"auto"`` joins the cluster started with
``ray start --head`` (see docs/scale.md); ``"ray://host:10001"`` uses Ray Client. A Ray session that is already
initialised in this process (e.g. by a notebook) is used as it is and left running.
"""

from __future__ import annotations

import logging
import math
import pickle
from typing import Any, Iterator, Optional

import numpy as np

from .base import ENGINES, IndexEngine

log = logging.getLogger(__name__)

_PIX, _META = "pix", "meta"


def _row(shard: str, kind: str, seq: int, payload: Any) -> dict:
    return {"shard": np.array([shard], dtype=object), "kind": np.array([kind], dtype=object),
            "seq": np.array([seq], dtype=np.int64),
            "payload": np.array([pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)], dtype=object)}


def _shard_stage(batch: dict, *, reader, shards, chunk_size: int, decode_cfg: dict, emb_cfg: Optional[dict],
                 keep_bytes: bool, embeds: bool, batch_size: int, hash_mode: str = "exact") -> Iterator[dict]:
    """CPU task: one shard -> its embedding batches (``pix`` rows, if an embedder runs) then one ``meta`` row.
    The task asks Ray for one CPU, so its BLAS/OpenMP pools run one thread while it works (threadpoolctl: Ray
    sets ``OMP_NUM_THREADS`` but OpenBLAS, loaded earlier in a reused worker, keeps one thread per core)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield from _shard_rows(batch, reader=reader, shards=shards, chunk_size=chunk_size, decode_cfg=decode_cfg,
                               emb_cfg=emb_cfg, keep_bytes=keep_bytes, embeds=embeds, batch_size=batch_size,
                               hash_mode=hash_mode)


def _shard_rows(batch: dict, *, reader, shards, chunk_size: int, decode_cfg: dict, emb_cfg: Optional[dict],
                keep_bytes: bool, embeds: bool, batch_size: int, hash_mode: str) -> Iterator[dict]:
    from ..shard import ShardAccumulator, iter_chunks, process_chunk

    for idx in batch["i"]:
        ref = shards[int(idx)]
        read_errors: dict = {}
        acc = ShardAccumulator(ref.id)
        keys: list[str] = []
        inputs: list = []           # preprocessed arrays (or stored bytes) not yet cut into a batch
        pending = 0
        seq = 0
        n_samples = 0

        def cut(n: int) -> dict:
            nonlocal inputs, keys, pending
            if keep_bytes:
                flat = inputs
                out = {"keys": keys[:n], "raw": flat[:n]}
                inputs = flat[n:]
            else:
                flat = np.concatenate(inputs) if len(inputs) > 1 else inputs[0]
                out = {"keys": keys[:n], "pixels": np.ascontiguousarray(flat[:n])}
                inputs = [flat[n:]] if len(flat) > n else []
            keys = keys[n:]
            pending -= n
            return out

        for chunk in iter_chunks(reader, [ref], chunk_size, read_errors):
            res = process_chunk(chunk, decode_cfg, emb_cfg, keep_bytes, hash_mode)
            n_samples += len(res.records) + len(res.errors) + len(res.not_indexed)
            acc.records.extend(res.records)
            acc.errors.extend(res.errors)
            acc.not_indexed.extend(res.not_indexed)
            if embeds and res.records:
                keys.extend(r["key"] for r in res.records)
                if keep_bytes:
                    inputs.extend(res.raw)
                else:
                    inputs.append(res.pixels)
                pending += len(res.records)
                while pending >= batch_size:  # the shard's fixed batches, from row 0
                    yield _row(ref.id, _PIX, seq, cut(batch_size))
                    seq += 1
        if embeds and pending:
            yield _row(ref.id, _PIX, seq, cut(pending))
            seq += 1
        yield _row(ref.id, _META, seq, {"records": acc.records, "errors": acc.errors,
                                        "not_indexed": acc.not_indexed,
                                        "read_errors": read_errors.get(ref.id, []),
                                        "n_batches": seq, "n_samples": n_samples})


class _EmbedActor:
    """Holds one embedder (on the actor's GPU when it has one); embeds ``pix`` rows, passes ``meta`` rows."""

    def __init__(self, emb_cfg: dict, gpu_decode: bool, decode_cfg: dict):
        from ..config import DecodeConfig, EmbedderConfig
        from ..embedders import build_embedder

        self.embedder = build_embedder(EmbedderConfig.model_validate(emb_cfg))
        self.gpu = None
        if gpu_decode:
            from ..gpu import GpuPath

            self.gpu = GpuPath.for_embedder(self.embedder, DecodeConfig.model_validate(decode_cfg))

    def __call__(self, batch: dict) -> dict:
        from ..shard import embed_batch

        payloads = []
        for shard, kind, payload in zip(batch["shard"], batch["kind"], batch["payload"]):
            if kind != _PIX:
                payloads.append(payload)
                continue
            d = pickle.loads(payload)
            if self.gpu is not None:
                emb, ok, errs = embed_batch(self.gpu.embed, d["raw"], d["keys"], str(shard))
            else:
                emb, ok, errs = embed_batch(self.embedder.embed, d["pixels"], d["keys"], str(shard))
            payloads.append(pickle.dumps((emb, ok, errs), protocol=pickle.HIGHEST_PROTOCOL))
        return {"shard": batch["shard"], "kind": batch["kind"], "seq": batch["seq"],
                "payload": np.array(payloads, dtype=object)}


def _spread_args() -> dict:
    """Remote args of the CPU shard tasks: spread over the nodes. Passing them as a ``ray_remote_args_fn`` also
    keeps Ray Data from fusing the shard stage into the embedding actors (it fuses a task map into a following
    actor map with compatible resources, which would run every decode inside the few actors)."""
    return {"scheduling_strategy": "SPREAD"}


def _describe_embedder(emb_cfg: dict, gpu_decode: bool, decode_cfg: dict) -> dict:
    actor = _EmbedActor(emb_cfg, gpu_decode, decode_cfg)
    desc = actor.embedder.describe()
    if actor.gpu is not None:
        desc = {**desc, "gpu_decode": actor.gpu.describe()}
    return desc


@ENGINES.register("ray")
class RayEngine(IndexEngine):
    name = "ray"

    def __init__(self, icfg):
        super().__init__(icfg)
        self._owns_ray = False
        self.gpus = 0
        self.cpus = 0

    def _ray(self):
        try:
            import ray
        except ModuleNotFoundError as e:  # pragma: no cover - depends on the install
            raise RuntimeError("index.engine=ray needs Ray: pip install 'auditor[ray]' (ray[data])") from e
        return ray

    def start(self) -> dict:
        ray = self._ray()
        if not ray.is_initialized():
            ray.init(address=self.icfg.ray_address, include_dashboard=False,
                     log_to_driver=self.icfg.progress, logging_level=logging.WARNING)
            self._owns_ray = True
        res = ray.cluster_resources()
        self.gpus, self.cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
        log.info("ray engine: cluster with %d CPUs, %d GPUs", self.cpus, self.gpus)
        if self.icfg.embedder.name == "none":
            return {"name": "none", "dim": 0}
        # describe the embedder where it will run (device "auto" resolves on the actor's node)
        task = ray.remote(_describe_embedder).options(**self._actor_resources())
        return ray.get(task.remote(self.icfg.embedder.model_dump(mode="json"), self.icfg.gpu_decode,
                                   self.icfg.decode.model_dump()))

    def _actor_embedder_cfg(self) -> dict:
        """The actors' embedder config; ``threads`` auto = the one CPU each actor asks Ray for."""
        d = self.icfg.embedder.model_dump(mode="json")
        if not d.get("threads"):
            d["threads"] = int(self._actor_resources()["num_cpus"])
        return d

    def _actor_resources(self) -> dict:
        return {"num_gpus": 1, "num_cpus": 1} if self.gpus else {"num_cpus": 1}

    def run(self, job) -> None:
        if not job.shards:
            return
        ray = self._ray()
        from tqdm.auto import tqdm

        from ..shard import ShardAccumulator, apply_embeddings, write_shard

        icfg = self.icfg
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = bool(icfg.progress)
        ctx.execution_options.preserve_order = False
        embeds = icfg.embedder.name != "none"
        ds = ray.data.from_items([{"i": i} for i in range(len(job.shards))], override_num_blocks=len(job.shards))
        ds = ds.map_batches(
            _shard_stage, batch_size=1, batch_format="numpy", num_cpus=1, ray_remote_args_fn=_spread_args,
            fn_kwargs={"reader": job.reader, "shards": job.shards, "chunk_size": icfg.chunk_size,
                       "decode_cfg": job.decode_cfg, "emb_cfg": job.worker_embedder_cfg,
                       "keep_bytes": job.keep_bytes, "embeds": embeds, "batch_size": icfg.embedder.batch_size,
                       "hash_mode": job.hash_mode})
        if embeds:
            n_actors = max(1, self.gpus) if self.gpus else 1
            ds = ds.map_batches(
                _EmbedActor, batch_size=1, batch_format="numpy",
                fn_constructor_kwargs={"emb_cfg": self._actor_embedder_cfg(),
                                       "gpu_decode": icfg.gpu_decode, "decode_cfg": icfg.decode.model_dump()},
                compute=ray.data.ActorPoolStrategy(size=n_actors), **self._actor_resources())

        bar = tqdm(total=len(job.shards), unit="shard", desc="index", disable=not icfg.progress)
        state: dict[str, dict] = {}
        try:
            for row in ds.iter_rows():
                sid = str(row["shard"])
                st = state.setdefault(sid, {"meta": None, "batches": {}})
                payload = pickle.loads(row["payload"])
                if row["kind"] == _META:
                    st["meta"] = payload
                else:
                    st["batches"][int(row["seq"])] = payload
                meta = st["meta"]
                if meta is None or len(st["batches"]) < meta["n_batches"]:
                    continue
                acc = ShardAccumulator(sid)
                acc.records, acc.errors, acc.not_indexed = meta["records"], meta["errors"], meta["not_indexed"]
                acc.embedded = True
                if embeds:
                    parts = [st["batches"][k] for k in range(meta["n_batches"])]
                    acc.emb = apply_embeddings(acc, job.embedder_dim, parts)
                write_shard(acc, job.shard_dir, None, icfg.embedder.batch_size, meta["read_errors"])
                del state[sid]
                bar.update(1)
        finally:
            bar.close()
        if state:
            raise RuntimeError(f"ray engine: shards {sorted(state)} did not complete")

    def close(self) -> None:
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False
