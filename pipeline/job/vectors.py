"""The vectors a build stores: the collection's rows, or their k-means centroids, optionally alpha-QE
expanded. One function for ``build`` and ``tune``, executing the plan's compression and expansion."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvc_index.compute.backend import Backend
from rvc_index.data.feature_set import FeatureSet
from rvc_index.job.plan import BuildPlan
from rvc_index.runtime.run import Run
from rvc_index.stages.compress import compress
from rvc_index.stages.expand import Expansion, expand


@dataclass
class IndexVectors:
    """The vectors to index [n_vectors, D] (dask, numpy or a memory map) and how they were made."""

    vectors: Any
    raw_rows: bool  # the collection's own rows, in order (ids are row numbers)
    expansion: Expansion | None

    @property
    def n_vectors(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def are_originals(self) -> bool:
        """The stored vectors are exactly the collection's frames (no compression, no expansion)."""
        return self.raw_rows and self.expansion is None


def prepare_vectors(features: FeatureSet, plan: BuildPlan, run: Run[Backend], spill_dir: Path,
                    stage: Callable[[str], AbstractContextManager[Any]] = lambda name: nullcontext()) -> IndexVectors:
    """Compress and expand ``features`` as ``plan`` says (an expansion's temporary files in ``spill_dir``);
    ``stage(name)`` wraps each stage that runs (the runner's memory check and timing)."""
    vectors: Any = features  # streamed from its files (a dask array only with a cluster)
    if plan.compression.apply:
        with stage("compress"):
            vectors = compress(features, plan.compression, run)
    expansion = None
    if plan.expansion is not None:  # the vectors to index become their alpha-QE expansions (memory or memmap)
        with stage("expand"):
            expansion = expand(vectors, plan.expansion, run, spill_dir)
        vectors = expansion.vectors
    return IndexVectors(vectors, not plan.compression.apply, expansion)
