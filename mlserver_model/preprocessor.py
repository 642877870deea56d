"""Cross removal and insertion: a ring's map <-> its model space (Ring 2: (N,140,56) <-> (N,136,48),
Ring 1: (N,92,56) <-> (N,88,48)).

The cross (disk slot 0, blade slot 0) never holds a ROC, so the model never sees it; maps
returned to users get it back as zeros so they overlay the ME bin for bin.
"""

from __future__ import annotations

import numpy as np

from .geometry import CROSS_COLUMNS, RING2, RingGeometry


def _check_stack(maps: np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3 or maps.shape[1:] != shape:
        raise ValueError(
            f"Expected {what} of shape (n, {shape[0]}, {shape[1]}), got {tuple(maps.shape)}"
        )
    return maps


def remove_cross(maps_nyx: np.ndarray, geometry: RingGeometry = RING2) -> np.ndarray:
    """(N,140,56) maps -> (N,136,48) contiguous model-space maps (a 2D map gives N = 1)."""
    maps = _check_stack(maps_nyx, geometry.map_shape, f"{geometry.name} maps")
    cross_rows = geometry.cross_rows
    # Two slicing concatenations are cheaper than fancy indexing on both axes at once.
    kept_rows = np.concatenate([maps[:, : cross_rows.start], maps[:, cross_rows.stop :]], axis=1)
    return np.concatenate(
        [kept_rows[:, :, : CROSS_COLUMNS.start], kept_rows[:, :, CROSS_COLUMNS.stop :]], axis=2
    )


def insert_cross(
    model_maps: np.ndarray, fill: float = 0, geometry: RingGeometry = RING2
) -> np.ndarray:
    """(N,136,48) model-space maps -> (N,140,56) maps with the cross set to `fill`."""
    maps = _check_stack(model_maps, geometry.model_shape, f"{geometry.name} model-space maps")
    out = np.full((maps.shape[0], *geometry.map_shape), fill, dtype=maps.dtype)
    rows, columns = geometry.cross_rows, CROSS_COLUMNS
    r0, r1, c0, c1 = rows.start, rows.stop, columns.start, columns.stop
    out[:, :r0, :c0] = maps[:, :r0, :c0]
    out[:, :r0, c1:] = maps[:, :r0, c0:]
    out[:, r1:, :c0] = maps[:, r0:, :c0]
    out[:, r1:, c1:] = maps[:, r0:, c0:]
    return out
