"""Training: good LS of DIALS parquet files -> a model file the runtime loads."""
