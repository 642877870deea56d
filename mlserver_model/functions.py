"""Ring 2 geometry (re-exported from `geometry`) and plots of Ring 2 maps.

Users of the original deployment import power groups and anomaly types from here, so this
module keeps that name; the geometry itself lives in `geometry.py`. Plotting needs matplotlib,
which the serving image does not have: it is imported inside the plotting functions only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .geometry import (  # noqa: F401  (re-exported for users of the original module map)
    ANOMALY_MULTI_DISK,
    ANOMALY_NONE,
    ANOMALY_QUARTER,
    ANOMALY_SINGLE_DISK,
    ANOMALY_TYPES,
    BLADES,
    DISKS,
    GROUP_DISK,
    GROUP_ID_MAP,
    GROUP_ID_MODEL,
    GROUP_MASKS_MODEL,
    GROUP_N_ROCS,
    GROUP_NAMES,
    GROUP_ROG,
    MAP_SHAPE,
    MODEL_SHAPE,
    MULTIDISK_CANDIDATES,
    N_GROUPS,
    QUARTER_GROUPS,
    QUARTER_NAMES,
    anomaly_type,
    anomaly_type_codes,
    blade_rows,
    disk_columns,
    group_index,
    roc_name,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def plot_ring2(map_yx: np.ndarray, ax: Axes | None = None, title: str = "", **imshow_kwargs):
    """Draw one (140, 56) Ring 2 map as DQM shows it: blade -17 at the bottom, disks left to right.

    Returns the image artist so callers can add a colour bar.
    """
    import matplotlib.pyplot as plt

    map_yx = np.asarray(map_yx)
    if map_yx.shape != MAP_SHAPE:
        raise ValueError(f"Expected one Ring 2 map of shape {MAP_SHAPE}, got {map_yx.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 8))
    image = ax.imshow(
        np.ma.masked_equal(map_yx, 0),
        origin="lower",
        extent=(-3.5, 3.5, -17.5, 17.5),
        aspect="auto",
        interpolation="nearest",
        **imshow_kwargs,
    )
    ax.set_xlabel("SignedDiskCoord")
    ax.set_ylabel("SignedBladePanelCoord")
    if title:
        ax.set_title(title)
    return image
