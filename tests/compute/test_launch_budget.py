"""Launch budget of the GPU routes, checked on a CPU: numpy behind the counting CuPy stand-in
(``cupy_standin.py``: CuPy 14.2's names, signatures and rules, read from the real package).

The budget: calls and device-to-host transfers (hidden synchronisations included) per k-means pass of the one
core (``compute.lloyd``), per mini-batch step and per expansion tile stay constant as K and the row count grow
(the whole device routes end to end: ``test_device_routes.py``).
"""

import numpy as np
from cupy_standin import XP, measure
from rvc_index.compute.backend import Backend
from rvc_index.compute.knn import top_k
from rvc_index.compute.lloyd import Exact, ResidentRows, lloyd
from rvc_index.compute.minibatch import minibatch_step, new_state
from rvc_index.config.schema import ExpandConfig
from rvc_index.stages.expand import expand_rows
from stage_runs import planned_expand


def device_rows(n, dim=16, seed=0):
    return XP.asarray(np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32))


def kmeans_pass_cost(n, k, rows_per_tile=1 << 20, tol=0.0):
    x = device_rows(n)
    centres = x[XP.asarray(np.arange(k))].copy()
    one = measure(lambda: lloyd(XP, ResidentRows(x, rows_per_tile), centres.copy(), 1, Exact(rows_per_tile), tol))
    three = measure(lambda: lloyd(XP, ResidentRows(x, rows_per_tile), centres.copy(), 3, Exact(rows_per_tile), tol))
    return (three[0] - one[0]) / 2, (three[1] - one[1]) / 2, three[1]


def test_kmeans_pass_launches_do_not_grow_with_k_or_rows():
    costs = {(n, k): kmeans_pass_cost(n, k) for n, k in [(2000, 16), (8000, 256), (20000, 1000)]}
    per_pass = {cost[:2] for cost in costs.values()}
    assert len(per_pass) == 1, costs  # the same calls per pass at every size
    calls, transfers = per_pass.pop()
    assert transfers == 0 and calls < 120  # no host round trip inside a pass
    assert {cost[2] for cost in costs.values()} == {1}  # one transfer per fit: every pass's MSD at once
    # more rows than a tile: the cost per pass grows by a constant per tile
    one_tile = kmeans_pass_cost(4000, 64, rows_per_tile=4000)
    four_tiles = kmeans_pass_cost(4000, 64, rows_per_tile=1000)
    per_tile = (four_tiles[0] - one_tile[0]) / 3
    assert 0 < per_tile < calls and kmeans_pass_cost(16000, 64, rows_per_tile=4000)[0] == four_tiles[0]


def test_a_pass_that_may_stop_reads_one_number():
    """The stop on the change of the mean squared distance reads that number once per pass, at any size."""
    costs = {(n, k): kmeans_pass_cost(n, k, tol=1e-9) for n, k in [(2000, 16), (20000, 1000)]}
    assert {cost[1] for cost in costs.values()} == {1.0}, costs


def test_minibatch_steps_read_nothing_back():
    def cost(n, k):
        batch = device_rows(n, seed=1)
        state = new_state(XP, batch[XP.asarray(np.arange(k))].copy())
        minibatch_step(XP, state, batch, dead_threshold=1.0, dead_window=1)  # the first step sets the usage up
        return measure(lambda: [minibatch_step(XP, state, batch, dead_threshold=1.0, dead_window=1)
                                for _ in range(3)])

    costs = {(n, k): cost(n, k) for n, k in [(1000, 16), (8000, 512)]}
    assert len(set(costs.values())) == 1 and next(iter(costs.values()))[1] == 0, costs


def knn_tile_cost(n, k=8, query_rows=300, dim=16):
    rng = np.random.default_rng(1)
    db = XP.asarray(rng.standard_normal((n, dim)).astype(np.float32))
    queries = db[:query_rows]
    return measure(lambda: top_k(XP, queries, db, k, tile_bytes=1 << 30))


def test_exact_knn_tile_launches_do_not_grow_with_rows():
    costs = {n: knn_tile_cost(n) for n in (1000, 4000, 16000)}
    assert len(set(costs.values())) == 1 and costs[1000][1] == 0, costs
    assert costs[1000][0] <= 6 + 3 * 8  # one product, then k rounds of argmax, a gather and a mark


def test_expansion_mix_tile_launches_do_not_grow_with_rows():
    def cost(n):
        rng = np.random.default_rng(2)
        unit = XP.asarray(rng.standard_normal((n, 16)).astype(np.float32))
        ids = XP.asarray(rng.integers(0, n, (256, 8)))
        norms = XP.asarray(np.ones(n, np.float32))
        return measure(lambda: expand_rows(XP, unit, unit[:256], ids, norms[:256], 3.0, "feature"))

    assert cost(1000) == cost(20000) and cost(1000)[1] == 0


def test_the_whole_expansion_reads_back_only_its_results():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    backend = Backend("cpu", XP)
    config = ExpandConfig(enabled=True, method="exact", tile_mb=0.5)
    calls, transfers = measure(lambda: planned_expand(x, config, backend))
    # the expanded rows per mixing tile, the neighbour ids and the mean cosine: not one per query tile or row
    mixing_tiles = -(-3000 // max(1, (8 * 2**20) // (4 * 8 * 16)))
    assert transfers <= mixing_tiles + 2, transfers
