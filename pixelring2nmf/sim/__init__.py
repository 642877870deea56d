"""The simulated detector: DIALS parquet, OMS JSON and the truth of injected anomalies."""
