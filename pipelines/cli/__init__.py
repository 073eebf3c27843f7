"""The `mtlops` command line and what it runs beside the kfp pipelines: the retrain trigger, the
month-by-month replay (`mtlops simulate`) and its comparison of retraining policies."""
