"""How good an index is: held-out queries, measures, the evaluation's size, typed results, the verdict, report.png."""
