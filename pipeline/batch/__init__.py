"""Many experiments on a Dask cluster: discover, plan, run one job each, isolate failures, report."""
