"""Measurements that print tables, each run from the repository root as `python -m benchmarks.NAME`; the shared
runners, journal and results header are in `benchmarks.common`, the results in benchmarks/results/."""
