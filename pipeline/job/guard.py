"""Memory guard: refuse a build plan that cannot fit before it starts, and each stage before it runs.

A build killed by the kernel's OOM killer (or a Dask nanny) loses its work without a word; a
refusal names the stage, its estimate and what limits memory. The estimates are the plan's
(``BuildPlan.stages``, each written by its stage), computed from what the headers say and the
config before any value is read; the guard only compares them with the memory available then.
See ``docs/reliability.md`` for how they compare with measured peaks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
from rvc_index.config.schema import SafetyConfig
from rvc_index.errors import RvcIndexError
from rvc_index.job.plan import BuildPlan
from rvc_index.job.record import MemoryRecord
from rvc_index.runtime.memory import MB, Budget, StageEstimate, mb, memory_budget
from rvc_index.runtime.progress import get_logger

MIN_CHUNK_MB = 1.0
STAGE_HINTS = {
    "check": "lower source.chunk_mb or run it with a Dask client (batch)",
    "compress": "lower compress.n_centroids, compress.sample_rows or compress.batch_rows",
    "expand": "lower expand.spill_mb (spill to disk) or expand.tile_mb",
    "train": "lower index.max_train_rows_per_list",
    "add": "enable compression (compress.row_threshold) to store centroids instead of every row",
    "evaluate": "lower evaluate.recall_queries",
    "write": "lower source.chunk_mb",
}


class StageMemoryError(RvcIndexError, MemoryError):
    """A stage's estimated peak does not fit in the memory available to this process."""


@dataclass(frozen=True)
class MemoryGuard:
    """Checks each stage of a plan before it runs (``check``); made by ``guard_plan`` with the first plan and
    kept for the plan remade after the value check (the guard holds no plan: each check names its own)."""

    safety: SafetyConfig
    label: str = ""
    shrunk_from: float | None = None
    rss_start: int = field(default_factory=lambda: psutil.Process().memory_info().rss)

    def check(self, plan: BuildPlan, stage: str) -> None:
        """Refuse ``stage`` of ``plan`` if its need no longer fits in what is available now.

        What this process grew by beyond the bytes earlier stages retain is freed memory its
        allocator kept: the stage can reuse it, so it counts as available.
        """
        estimate = plan.estimate(stage)
        if self.safety.memory_guard == "off" or estimate is None or not estimate.need:
            return
        grown = max(0, psutil.Process().memory_info().rss - self.rss_start - plan.held_before(stage))
        budget = memory_budget(self.safety.memory_limit_mb)
        budget = Budget(budget.available + grown, budget.source)
        if estimate.need > budget.available * self.safety.memory_headroom:
            raise StageMemoryError(refusal(self.label, estimate, estimate.need, budget, self.safety.memory_headroom))

    def record(self, plan: BuildPlan) -> MemoryRecord:
        """The report's ``memory`` entry for ``plan``."""
        return MemoryRecord(self.safety.memory_guard, plan.chunk_mb, self.shrunk_from,
                            round(plan.peak()[0] / MB, 1), {s.stage: round(s.need / MB, 1) for s in plan.stages})


def refusal(label: str, estimate: StageEstimate, need: int, budget: Budget, headroom: float,
            held: list[StageEstimate] | None = None) -> str:
    """The message of a refused plan or stage: what, how much, what limits it, what to change."""
    prefix = f"{label}: " if label else ""
    if held:  # the whole plan: its peak is this stage on top of what earlier stages keep
        biggest = max(held, key=lambda s: s.retained)
        what = (f"the plan would peak at about {mb(need)} in the {estimate.stage} stage ("
                f"{mb(sum(s.retained for s in held))} kept from earlier stages, {biggest.detail}; "
                f"this stage {mb(estimate.need)}: {estimate.detail})")
        hints = [STAGE_HINTS[estimate.stage], STAGE_HINTS[biggest.stage]]
    else:
        what = f"the {estimate.stage} stage would need about {mb(need)} ({estimate.detail})"
        hints = [STAGE_HINTS[estimate.stage]]
    return (f"{prefix}{what} but only {mb(budget.available * headroom)} can be used ({budget.source}, "
            f"safety.memory_headroom={headroom:g}); {', or '.join(dict.fromkeys(hints))}; "
            "or set safety.memory_guard=off to try anyway")


def guard_plan(make: Callable[[float], BuildPlan], chunk_mb: float, safety: SafetyConfig,
               label: str = "") -> tuple[BuildPlan, MemoryGuard]:
    """The plan ``make(chunk_mb)``, checked against the memory available now (in ``shrink`` mode with smaller
    chunks until it fits), and the guard that checks its stages. Raises StageMemoryError (naming the stage)
    when no plan fits."""
    plan = make(chunk_mb)
    if safety.memory_guard == "off":
        return plan, MemoryGuard(safety, label)
    budget = memory_budget(safety.memory_limit_mb)
    usable = budget.available * safety.memory_headroom
    top, stage, held = plan.peak()
    if top <= usable:
        return plan, MemoryGuard(safety, label)
    size = chunk_mb
    while safety.memory_guard == "shrink" and size / 2 >= MIN_CHUNK_MB:
        size /= 2
        smaller = make(size)
        if smaller.peak()[0] <= usable:
            get_logger().warning("%smemory: source.chunk_mb lowered from %g to %g so that the plan's peak (%s) "
                                 "fits in %s (%s)", f"{label}: " if label else "", chunk_mb, size,
                                 mb(smaller.peak()[0]), mb(usable), budget.source)
            return smaller, MemoryGuard(safety, label, shrunk_from=chunk_mb)
    raise StageMemoryError(refusal(label, stage, top, budget, safety.memory_headroom, held))
