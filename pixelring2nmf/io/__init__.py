"""Files: DIALS parquet, OMS JSON, per-LS results, output paths, and atomic writes.

The bottom layer of the toolkit: it imports only the runtime (`mlserver_model`) and the
toolkit's error family, and every other package reads and writes through it.
"""
