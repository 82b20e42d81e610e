"""The plan of one build, made once from the manifest, the config and the backend: every stage's
decisions (chunks, compression and its k-means, expansion, index layout, evaluation queries) and each
stage's own memory estimate. The guard reads the estimates, the runner executes the plan, ``tune``
reuses it and ``batch --dry-run`` prints its decisions (``describe``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rvc_index.compute.backend import Backend
from rvc_index.config.schema import SEARCH_K, Config
from rvc_index.data.feature_set import check_estimate, resident_fits, stream_bytes
from rvc_index.data.sources import Manifest
from rvc_index.evaluation.evaluate import evaluate_estimate
from rvc_index.runtime.memory import StageEstimate
from rvc_index.stages.compress import CompressPlan, KMeansPlan, compress_estimate, plan_compression
from rvc_index.stages.expand import ExpandPlan, expand_estimate, plan_expansion
from rvc_index.stages.indexing import IndexPlan, add_estimate, plan_index, train_estimate


@dataclass(frozen=True)
class BuildPlan:
    """What one build will do, and what each stage will hold in memory (bytes)."""

    n_rows: int  # rows to index before compression (declared by the headers until the value check)
    dim: int
    backend: str
    chunk_mb: float
    resident: bool  # the value check keeps the collection in memory: the stages after it read no file
    compression: CompressPlan  # with its k-means plan (``compression.kmeans``) when it applies
    expansion: ExpandPlan | None
    index: IndexPlan
    eval_queries: int
    stages: tuple[StageEstimate, ...]

    @property
    def kmeans(self) -> KMeansPlan | None:
        """The minibatch k-means, when compression applies with that method."""
        return self.compression.kmeans

    @property
    def n_vectors(self) -> int:
        """Vectors stored in the index: the centroids when compressed, else every row."""
        return self.compression.n_centroids if self.compression.apply else self.n_rows

    def estimate(self, stage: str) -> StageEstimate | None:
        return next((s for s in self.stages if s.stage == stage), None)

    def held_before(self, stage: str) -> int:
        """Bytes the stages before ``stage`` leave held."""
        held = 0
        for estimate in self.stages:
            if estimate.stage == stage:
                break
            held += estimate.retained
        return held

    def peak(self) -> tuple[int, StageEstimate, list[StageEstimate]]:
        """The largest (bytes held by earlier stages + this stage's need), the stage reaching it, and the
        earlier stages whose retained bytes are held then."""
        held: list[StageEstimate] = []
        best: tuple[int, StageEstimate, list[StageEstimate]] = (0, self.stages[0], [])
        for estimate in self.stages:
            total = sum(s.retained for s in held) + estimate.need
            if total > best[0]:
                best = (total, estimate, list(held))
            if estimate.retained:
                held.append(estimate)
        return best

    def describe(self) -> list[str]:
        """One line per decision, for the log and ``batch --dry-run``."""
        lines = [f"{self.n_rows:,} rows x {self.dim}, backend {self.backend}, chunks of {self.chunk_mb:g} MB",
                 "source: read once and kept in memory (at most two chunks' worth)"
                 if self.resident else "source: streamed from the files, chunk by chunk, in each pass",
                 f"compression: {self.compression.reason}"]
        if self.kmeans is not None:
            lines.append(f"k-means: {self.kmeans.describe()}")
        if self.expansion is not None:
            lines.append(f"expansion: alpha {self.expansion.alpha:g} over {self.expansion.neighbours} neighbours, "
                         f"{self.expansion.method} ({self.expansion.reason}), "
                         f"{'spilled to disk' if self.expansion.spill else 'in memory'}")
        lines.append(f"index: {self.index.factory}, nprobe {self.index.nprobe}, "
                     f"train on {self.index.train_rows:,} rows, about {self.index.us_per_frame:,.0f} us per frame")
        lines.append(f"evaluation: up to {self.eval_queries:,} held-out query frames, sized to the build"
                     if self.eval_queries else "evaluation: off")
        return lines


def make_plan(manifest: Manifest, config: Config, backend: Backend, local: bool, chunk_mb: float | None = None,
              n_rows: int | None = None, resident: bool | None = None) -> BuildPlan:
    """Decide every stage of a build of ``manifest`` on ``backend`` (``local``: the chunks load on this process's
    threads, no Dask cluster). ``n_rows``: the rows left after the value check, else the headers' count.
    ``resident``: whether the value check kept the collection (None: whether it will, ``resident_fits``)."""
    chunk_mb = config.source.chunk_mb if chunk_mb is None else chunk_mb
    n = manifest.rows if n_rows is None else n_rows
    dim = manifest.dim
    threads = os.cpu_count() or 1
    resident = resident_fits(manifest, chunk_mb, local) if resident is None else resident
    stream = 0 if resident else stream_bytes(manifest, chunk_mb, local)  # resident: passes read from memory
    compression = plan_compression(n, dim, config.compress, config.budget, backend)
    stages = [check_estimate(manifest, chunk_mb, local, threads, resident)]
    vectors = n
    if compression.apply:
        stages.append(compress_estimate(n, dim, compression, stream, backend.is_gpu))
        vectors = compression.n_centroids
    expansion = None
    if config.expand.enabled:
        expansion = plan_expansion(vectors, dim, config.expand, backend)
        stages.append(expand_estimate(expansion, threads, stream))
    index = plan_index(vectors, dim, config.index, config.budget, frames=not compression.apply)
    stages += [train_estimate(index, stream), add_estimate(index, stream)]
    queries = min(config.evaluate.recall_queries, n)
    if queries:
        stages.append(evaluate_estimate(queries, vectors, dim, index.n_list, SEARCH_K, stream))
    stages.append(StageEstimate("write", stream if config.output.write_total_fea else 0, 0, "streamed"))
    return BuildPlan(n, dim, backend.name, chunk_mb, resident, compression, expansion, index, queries,
                     tuple(stages))
