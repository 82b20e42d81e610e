"""The compress and expand stages as a build runs them (planned for a config on a backend, then executed on a
``Run``), for tests that start from a config section."""


def planned_kmeans(features, n_centroids, config, backend, seed=0, client=None):
    """The compress stage's k-means as a build runs it: ``plan_kmeans`` for ``config`` on ``backend``, then
    ``fit_centroids`` on a ``Run``; returns the final state."""
    from rvc_index.runtime.run import Run
    from rvc_index.stages.compress import fit_centroids, plan_kmeans

    return fit_centroids(features, plan_kmeans(features.n_rows, n_centroids, config, backend),
                         Run(backend, client, seed))


def planned_expand(vectors, config, backend, client=None, spill_dir=None, seed=0):
    """The expand stage as a build runs it: ``plan_expansion`` for ``config`` on ``backend``, then ``expand``."""
    from rvc_index.runtime.run import Run
    from rvc_index.stages.expand import expand, plan_expansion

    plan = plan_expansion(int(vectors.shape[0]), int(vectors.shape[1]), config, backend)
    return expand(vectors, plan, Run(backend, client, seed), spill_dir)
