"""Plots of Ring 2 maps as the pixel DQM shows them.

matplotlib is imported inside the plotting functions, so importing the toolkit stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mlserver_model.geometry import MAP_SHAPE

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
