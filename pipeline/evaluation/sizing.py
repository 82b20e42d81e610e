"""How much evaluation a build can afford, decided before the evaluation runs.

A build's evaluation costs at most ``evaluate.max_share`` (10 %) of the seconds the build has taken
so far. From the collection's size and the index it predicts the cost of each part and keeps what
fits: the number of held-out query frames (exact k-NN over the stored vectors: q x N x D), the exact
blend reference over the original frames (one more pass over the collection when the index stores
other vectors: centroids or expansions), latency repeats and the nprobe sweep (timed from the index's
own search of the queries), and report.png (about a second: matplotlib). ``evaluate.full=true``
measures everything whatever it costs; ``rvc-index eval`` always does.

The device's rates (``compute.backend.DeviceProfile``) are a quiet 2-core machine's, rounded down: on a busy
machine the build and the evaluation slow down alike, and the share stays near its bound (the figures:
docs/benchmarks.md, "Lab notes").
"""

from __future__ import annotations

from dataclasses import dataclass

from rvc_index.compute.backend import CPU_PROFILE, DeviceProfile
from rvc_index.config.schema import EvaluateConfig

FRAMES_PER_SECOND = 50  # HuBERT frames per second of 16 kHz audio (hop 320): RVC searches 50 per second
READ_BYTES_PER_S = 2.5e8  # a streamed pass over the feature files (load, finite check)
FIXED_S = 0.05  # held-out files, masks, gathers and blends of a few hundred queries
SEARCH_S = 1.5e-4  # one query's single-thread search at the stored settings, before it is measured
PICTURE_S = 1.0  # matplotlib's import and report.png
MIN_QUERIES = FRAMES_PER_SECOND  # one one-second window: the exact blend reference is kept when it fits with these
FLOOR_QUERIES = 20  # whatever the budget: recall@8 over 160 neighbours (a fast build of many frames)
LATENCY_FRAMES = 5 * FRAMES_PER_SECOND  # frames timed per repeat: five one-second batches
FULL_REPEATS = 5  # latency repeats of a full evaluation (each batch keeps its fastest)
MIN_SWEEP_POINTS = 3  # fewer nprobe values draw no curve


@dataclass(frozen=True)
class EvaluationPlan:
    """What a build's evaluation measures, and the seconds it may take (None: everything)."""

    queries: int  # held-out query frames
    reference: bool  # RVC's blend over exact neighbours among the original frames is computed
    latency_frames: int  # query frames timed per latency repeat
    latency_repeats: int  # upper bound; ``repeats_within`` lowers it from the measured search time
    sweep: bool  # an nprobe sweep may run (``sweep_within`` picks its values)
    plot: bool  # report.png is drawn
    budget_s: float | None
    estimate_s: float  # predicted seconds of the exact passes and fixed work (searches come on top)
    notes: tuple[str, ...] = ()

    @property
    def full(self) -> bool:
        return self.budget_s is None

    def left_s(self) -> float:
        """Seconds of the budget the exact passes leave for latency and the sweep."""
        return float("inf") if self.budget_s is None else max(0.0, self.budget_s - self.estimate_s)

    def repeats_within(self, search_s_per_query: float) -> int:
        """Latency repeats: the one in the estimate, and more while they fit in half of what is left."""
        if self.full:
            return self.latency_repeats
        cost = max(search_s_per_query, 1e-9) * self.latency_frames
        return max(1, min(self.latency_repeats, 1 + int(self.left_s() / 2 / cost)))

    def sweep_within(self, n_list: int, stored: int, search_s_per_query: float) -> list[int]:
        """The nprobe values to sweep: every ``nprobe_values`` value on a full evaluation, else the
        smallest ones whose searches fit in the other half of what is left (none if under 3 fit).

        A search at nprobe p is taken to cost max(1, p / stored) times one at the stored nprobe (the
        lists scanned grow with p; the coarse quantizer's cost does not)."""
        if not self.sweep:
            return []
        values = nprobe_values(n_list, stored)
        if self.full:
            return values
        room, chosen = self.left_s() / 2, []
        per_value = max(search_s_per_query, 1e-9) * (self.queries + self.latency_frames)
        for value in values:
            room -= per_value * max(1.0, value / max(stored, 1))
            if room < 0:
                break
            chosen.append(value)
        return chosen if len(chosen) >= MIN_SWEEP_POINTS else []


def full_plan(queries: int, sweep: bool = True, plot: bool = True, repeats: int = FULL_REPEATS) -> EvaluationPlan:
    """Everything: ``queries`` frames, the exact reference, every latency batch, the whole sweep."""
    return EvaluationPlan(queries, True, queries, repeats, sweep, plot, None, 0.0, ("full evaluation",))


def exact_seconds(queries: int, rows: int, dim: int, device: DeviceProfile = CPU_PROFILE) -> float:
    """Predicted seconds of an exact k-NN of ``queries`` over ``rows`` vectors of ``dim`` (in memory) on
    ``device`` (its matrix-product rate and top-k cost)."""
    return queries * rows * (2.0 * dim / device.gemm_flops + device.topk_s_per_pair)


def plan_evaluation(config: EvaluateConfig, n_rows: int, n_vectors: int, dim: int, *, stored_is_original: bool,
                    build_seconds: float | None, device: DeviceProfile = CPU_PROFILE) -> EvaluationPlan:
    """The evaluation a build of ``n_rows`` frames storing ``n_vectors`` vectors of ``dim`` can afford
    after ``build_seconds`` of building (None, or ``config.full``: everything).

    ``stored_is_original``: the stored vectors are the frames, so the exact pass over them is the
    blend reference too; otherwise the reference is one more pass over ``n_rows`` frames, kept only
    when it fits with ``MIN_QUERIES`` queries. As many queries as fit in the budget, never under
    ``FLOOR_QUERIES``.
    """
    wanted = max(0, min(config.recall_queries, n_rows))
    plot = config.plot is True or config.plot == "auto"
    if config.full or build_seconds is None:
        return full_plan(wanted, config.nprobe_sweep, plot)
    budget = config.max_share * max(build_seconds, 0.0)
    per_query = exact_seconds(1, n_vectors, dim, device)
    reference_per_query = 0.0 if stored_is_original else exact_seconds(1, n_rows, dim, device)
    reference_pass = 0.0 if stored_is_original else n_rows * dim * 4 / READ_BYTES_PER_S
    floor = min(wanted, MIN_QUERIES)
    notes = [f"{config.max_share:.0%} of the {build_seconds:.1f} s build so far: {budget:.2f} s "
             "(evaluate.full=true measures everything)"]
    reference = stored_is_original or FIXED_S + reference_pass + floor * (per_query + reference_per_query) <= budget
    if reference:
        per_query += reference_per_query
    else:
        notes.append(f"no exact blend reference: a pass over the {n_rows:,} original frames would take about "
                     f"{reference_pass + floor * reference_per_query:.1f} s")
    per_query += SEARCH_S
    fixed = FIXED_S + (LATENCY_FRAMES + FRAMES_PER_SECOND) * SEARCH_S  # one latency repeat and its warm-up
    fixed += reference_pass if reference and not stored_is_original else 0.0
    queries = min(wanted, max(FLOOR_QUERIES, int((budget - fixed) / max(per_query, 1e-12))))
    if queries < wanted:
        notes.append(f"{queries} of {wanted} query frames: exact k-NN over {n_vectors:,} stored vectors")
    estimate = fixed + queries * per_query
    if config.plot == "auto":
        plot = budget - estimate >= PICTURE_S
        if not plot:
            notes.append(f"no report.png: drawing it takes about {PICTURE_S:.0f} s (evaluate.plot=true draws it)")
    return EvaluationPlan(queries, reference, min(queries, LATENCY_FRAMES), FULL_REPEATS, config.nprobe_sweep,
                          plot, budget, estimate, tuple(notes))


def nprobe_values(n_list: int, stored: int) -> list[int]:
    """nprobe values for the recall/latency curve: powers of two up to max(64, 4 x stored), and stored."""
    top = min(n_list, max(64, 4 * stored))
    values = {1 << i for i in range(top.bit_length()) if 1 << i <= top} | {stored, top}
    return sorted(v for v in values if 1 <= v <= n_list)
