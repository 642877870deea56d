"""`pixelring2nmf make-test-data`: one batch of a DIALS parquet as the original test_data.pkl.

The pickle is what `test_predictions.py` sends to a running server, so it keeps the layout of
the original deployment: a dict with `Ring2` (N, 140, 56) (`Ring1` (N, 92, 56) when the parquet
holds the Ring 1 ME: the V2 input name of the file's ring), `run_number` and `ls_number` (N,),
plus, when OMS data are given, every OMS column aligned to those LS under its OMS attribute
name (an LS absent from OMS gets null there, exactly what DIALS would have to send for it).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np

from mlserver_model.errors import checked_integer

from ..errors import OptionError
from .atomic import write_bytes
from .oms import align_oms, read_oms_json
from .parquet import read_dials_parquet

logger = logging.getLogger(__name__)

# OMS columns that would only repeat the histogram's own keys under another name
_REDUNDANT_OMS_COLUMNS = ("run_number",)


def make_test_data(
    parquet_path: str | Path,
    oms_path: str | Path | None = None,
    *,
    batch_size: int = 750,
    batch_id: int = 0,
) -> dict[str, np.ndarray]:
    """Batch `batch_id` (0-based) of `batch_size` LS, in (run, LS) order, as the pickle's dict."""
    checked_integer(batch_size, "--batch-size", minimum=1)
    checked_integer(batch_id, "--batch-id")
    data = read_dials_parquet(parquet_path)
    if data.n_repeated:
        logger.warning(data.repeated_message(parquet_path))
    n_batches = -(-len(data) // batch_size)
    if batch_id >= n_batches:
        raise OptionError(
            f"--batch-id {batch_id}: no such batch: {parquet_path} has {len(data)} LS, i.e. "
            f"{n_batches} batch(es) of {batch_size} (ids 0..{n_batches - 1})"
        )
    rows = slice(batch_id * batch_size, (batch_id + 1) * batch_size)
    batch = {  # "Ring2" (N, 140, 56), or "Ring1" (N, 92, 56) for a Ring 1 ME's file
        data.geometry.input_name: data.maps[rows],
        "run_number": data.run[rows],
        "ls_number": data.ls[rows],
    }
    if oms_path is not None:
        aligned = align_oms(read_oms_json(oms_path), batch["run_number"], batch["ls_number"])
        batch.update(
            {name: values for name, values in aligned.items() if name not in _REDUNDANT_OMS_COLUMNS}
        )
    return batch


def write_test_data(batch: dict[str, np.ndarray], out_path: str | Path) -> Path:
    return write_bytes(out_path, pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
