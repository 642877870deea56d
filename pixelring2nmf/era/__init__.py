"""The era engine: plan -> judge -> merge on an executor, then the experts' tables and files.

plan.py (files, footers, tasks) -> judge.py (maps -> per-LS results, the one loop) ->
executors.py / dask_executor.py (where tasks run) -> merge.py (one era, one duplicate policy)
-> engine.py (the three together) -> tables.py (the original's spreadsheets) -> output.py (a
folder that never lies). Only dask_executor.py imports dask.
"""
