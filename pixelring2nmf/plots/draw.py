"""Plots of Ring 2 maps as the pixel DQM shows them, and of an era's results run by run.

Axes follow the experts' reading of the ME: x is SignedDiskCoord (disks -3..+3, disk 0 is the
empty cross), y is SignedBladePanelCoord (blades -17..+17, blade -17 at the bottom; inside each
blade the lower two ROC rows are panel 2, the upper two panel 1). The 48 power groups are
blocks of one disk x one blade range, so they are drawn as rectangles: anomalous ones in red
and named, the others thin grey.

matplotlib is imported inside the functions, so importing the toolkit stays cheap; the Agg
backend is chosen before pyplot, so figures render on machines without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mlserver_model.geometry import (
    ANOMALY_MULTI_DISK,
    ANOMALY_QUARTER,
    ANOMALY_SAME_DISK,
    ANOMALY_SINGLE_DISK,
    BLADE_SIDES,
    GROUP_DISK,
    GROUP_NAMES,
    GROUP_ROG,
    RING2,
    RingGeometry,
)

from ..errors import OptionError
from ..io.atomic import write_atomically

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

EXTENT = (-3.5, 3.5, -17.5, 17.5)  # SignedDiskCoord x SignedBladePanelCoord of the Ring 2 ME
TYPE_COLOURS = {
    ANOMALY_MULTI_DISK: "#d62728",
    ANOMALY_QUARTER: "#9467bd",
    ANOMALY_SINGLE_DISK: "#ff7f0e",
    ANOMALY_SAME_DISK: "#8c564b",
}
ANOMALY_EDGE = "#e8000b"


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "module://matplotlib_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def extent(geometry: RingGeometry = RING2) -> tuple[float, float, float, float]:
    """The ME's axes: SignedDiskCoord -3.5..3.5, SignedBladePanelCoord -n-0.5..n+0.5."""
    half = geometry.n_blades + 0.5
    return (-3.5, 3.5, -half, half)


def _group_box(g: int, geometry: RingGeometry = RING2) -> tuple[float, float, float, float]:
    """(x0, y0, width, height) of power group g in SignedDiskCoord x SignedBladePanelCoord."""
    disk = int(GROUP_DISK[g])
    first, last = geometry.rog_blades[int(GROUP_ROG[g])]
    side = GROUP_NAMES[g].split("_")[1][2]  # 'O' (negative blades) or 'I'
    low, high = (first, last) if side == BLADE_SIDES[1] else (-last, -first)
    return disk - 0.5, low - 0.5, 1.0, high - low + 1.0


def short_group_name(name: str) -> str:
    """'FPix_BmI_D2_ROG2' -> 'BmI D2 ROG2': fits inside a group's box."""
    return name.removeprefix("FPix_").replace("_", " ")


def describe_groups(names: Sequence[str]) -> str:
    """Group names, compact: 'BmO D1 ROG1/3/4, D2 ROG1/2/3/4; BpI D2 ROG2' (a quarter fits)."""
    by_shell: dict[str, dict[str, list[str]]] = {}
    for name in names:
        _, shell, disk, rog = name.split("_")
        by_shell.setdefault(shell, {}).setdefault(disk, []).append(rog.removeprefix("ROG"))
    return "; ".join(
        f"{shell} " + ", ".join(f"{disk} ROG{'/'.join(rogs)}" for disk, rogs in disks.items())
        for shell, disks in by_shell.items()
    )


def ring2_axes(ax: Axes, *, blade_labels: bool = True, geometry: RingGeometry = RING2) -> None:
    """Disk ticks on x, blade ticks on y (panel boundaries as minor ticks), the cross greyed;
    blades +-17 (Ring 2) or +-11 (Ring 1, `geometry` RING1)."""
    x0, x1, y0, y1 = extent(geometry)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xticks(range(-3, 4), ["-3", "-2", "-1", "", "+1", "+2", "+3"])
    ax.set_xticks(np.arange(-3.5, 4.0, 1.0), minor=True)
    n = geometry.n_blades
    blades = [b for b in range(-n, n + 1) if b != 0]
    ax.set_yticks(blades, [f"{b:+d}" for b in blades], fontsize=6)
    ax.set_yticks(np.arange(-n, n + 1.0, 1.0), minor=True)  # panel 2 | panel 1 inside a blade
    ax.tick_params(axis="y", which="minor", length=2)
    ax.tick_params(axis="y", labelleft=blade_labels)
    ax.set_xlabel("disk (SignedDiskCoord)")
    if blade_labels:
        ax.set_ylabel(
            "blade (SignedBladePanelCoord)\ninside a blade: lower half panel 2, upper half panel 1"
        )
    cross = {"color": "0.85", "zorder": 0.5, "lw": 0}
    ax.axvspan(-0.5, 0.5, **cross)
    ax.axhspan(-0.5, 0.5, **cross)


def outline_groups(
    ax: Axes,
    anomalous: np.ndarray | None = None,
    *,
    names: bool = False,
    geometry: RingGeometry = RING2,
) -> None:
    """The 48 power groups as rectangles; anomalous ones thick red (and named if `names`)."""
    from matplotlib.patches import Rectangle

    anomalous = np.zeros(len(GROUP_NAMES), bool) if anomalous is None else np.asarray(anomalous)
    for g in range(len(GROUP_NAMES)):
        x0, y0, width, height = _group_box(g, geometry)
        bad = bool(anomalous[g])
        ax.add_patch(
            Rectangle(
                (x0, y0),
                width,
                height,
                fill=False,
                lw=2.2 if bad else 0.5,
                ec=ANOMALY_EDGE if bad else "0.35",
                zorder=3 if bad else 2,
                gid=f"power-group:{GROUP_NAMES[g]}",
            )
        )
        if bad and names:
            ax.text(
                x0 + width / 2,
                y0 + height / 2,
                short_group_name(GROUP_NAMES[g]),
                rotation=90,
                ha="center",
                va="center",
                fontsize=7,
                color="white",
                fontweight="bold",
                zorder=4,
                bbox={"boxstyle": "round,pad=0.15", "fc": ANOMALY_EDGE, "ec": "none"},
            )


def plot_ring2(map_yx: np.ndarray, ax: Axes | None = None, title: str = "", **imshow_kwargs):
    """Draw one (140, 56) Ring 2 map as DQM shows it: blade -17 at the bottom, disks left to right.

    Zero bins (the cross, dead ROCs) are left blank. Returns the image artist so callers can add
    a colour bar.
    """
    plt = _pyplot()
    map_yx = np.asarray(map_yx)
    if map_yx.shape != RING2.map_shape:
        raise ValueError(f"Expected one Ring 2 map of shape {RING2.map_shape}, got {map_yx.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 8))
    image = ax.imshow(np.ma.masked_equal(map_yx, 0), **_image_kwargs(), **imshow_kwargs)
    ring2_axes(ax)
    if title:
        ax.set_title(title)
    return image


def lumisection_figure(
    map_yx: np.ndarray,
    roc_maps: dict[str, np.ndarray],
    anomalous_groups: np.ndarray,
    *,
    run: int,
    ls: int,
    anomaly_type: str,
    metric: float,
    flag: bool,
    dcs_note: str = "",
    z_threshold: float | None = None,
    geometry: RingGeometry = RING2,
) -> Figure:
    """One LS: occupancy, reconstruction, deficit significance and bad ROCs, side by side.

    `roc_maps` holds the (140, 56) maps `PixelRing2NMF.roc_maps` returns for this LS
    (reconstruction, significance, bad); occupancy and reconstruction share one colour scale
    so a deficit reads as a colour difference.
    """
    plt = _pyplot()
    from matplotlib.colors import ListedColormap, TwoSlopeNorm

    height = 9 if geometry.n_blades > 12 else 6.5
    fig, axes = plt.subplots(1, 4, figsize=(17, height), sharey=True, constrained_layout=True)
    image = _image_kwargs(geometry)
    reconstruction = roc_maps["reconstruction"]
    live = reconstruction > 0
    top = float(np.percentile(np.concatenate([map_yx[live], reconstruction[live]]), 99.5))
    scale = {"vmin": 0.0, "vmax": max(top, 1.0), "cmap": "viridis"}
    occupancy = axes[0].imshow(np.ma.masked_where(~live & (map_yx == 0), map_yx), **image, **scale)
    axes[1].imshow(np.ma.masked_where(~live, reconstruction), **image, **scale)
    fig.colorbar(occupancy, ax=axes[:2], label="clusters per ROC", shrink=0.8, pad=0.01)

    significance = roc_maps.get("significance")
    if significance is not None:
        limit = max(10.0, 2.5 * (z_threshold or 4.0))
        z = axes[2].imshow(
            np.ma.masked_where(~live, np.clip(significance, -limit, limit)),
            cmap="RdBu_r",
            norm=TwoSlopeNorm(0.0, -limit, limit),
            **image,
        )
        label = "deficit significance (σ): + fewer clusters than expected"
        fig.colorbar(z, ax=axes[2], label=label, shrink=0.8, pad=0.01)
    else:
        axes[2].text(0, 0, "no significance\n(original rule)", ha="center", va="center")

    # bad ROCs: 0 = not expected to count (dead, cross), 1 = live and fine, 2 = bad
    state = np.where(roc_maps["bad"], 2, np.where(live, 1, 0))
    states = ListedColormap(["white", "#cfd8dc", "#b71c1c"])
    bad = axes[3].imshow(state, cmap=states, vmin=-0.5, vmax=2.5, **image)
    bar = fig.colorbar(bad, ax=axes[3], ticks=[0, 1, 2], shrink=0.8, pad=0.01)
    bar.ax.set_yticklabels(["no data expected", "live ROC", "bad ROC"])

    titles = ("occupancy", "NMF reconstruction", "deficit significance", "bad ROCs, power groups")
    for i, (ax, title) in enumerate(zip(axes, titles, strict=True)):
        ring2_axes(ax, blade_labels=i == 0, geometry=geometry)
        outline_groups(ax, anomalous_groups, names=i in (0, 3), geometry=geometry)
        ax.set_title(title)
    verdict = "flagged" if flag else "not flagged"
    names = describe_groups(np.asarray(GROUP_NAMES)[np.asarray(anomalous_groups, bool)])
    ring = "" if geometry is RING2 else f"{geometry.name}, "
    fig.suptitle(
        f"{ring}Run {run}, LS {ls} — {anomaly_type}, Metric {metric:.2f} ({verdict})"
        + (f"\nanomalous power groups: {names}" if names else "\nno anomalous power group")
        + (f"; {dcs_note}" if dcs_note else ""),
        fontsize=13,
    )
    return fig


def joint_lumisection_figure(
    maps: dict[int, np.ndarray | None],
    roc_maps: dict[int, dict[str, np.ndarray]],
    anomalous_groups: np.ndarray,
    *,
    geometries: dict[int, RingGeometry],
    run: int,
    ls: int,
    anomaly_type: str,
    metric: float,
    flag: bool,
    dcs_note: str = "",
) -> Figure:
    """One LS judged by a joint model: each ring's occupancy and bad ROCs, side by side, the
    power groups the joint decision found anomalous outlined in both rings (a group powers
    blades of both). A ring without a map for the LS says so in its panels."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    rings = sorted(geometries)
    fig, axes = plt.subplots(
        1, 2 * len(rings), figsize=(8.5 * len(rings), 8.5), constrained_layout=True
    )
    states = ListedColormap(["white", "#cfd8dc", "#b71c1c"])
    for k, ring in enumerate(rings):
        geometry = geometries[ring]
        occupancy_ax, bad_ax = axes[2 * k], axes[2 * k + 1]
        map_yx = maps.get(ring)
        for ax, title in ((occupancy_ax, "occupancy"), (bad_ax, "bad ROCs, power groups")):
            ring2_axes(ax, blade_labels=ax is occupancy_ax, geometry=geometry)
            if k:  # the blade axis is explained once, left of the first ring
                ax.set_ylabel("")
            outline_groups(ax, anomalous_groups, names=ax is bad_ax, geometry=geometry)
            ax.set_title(f"{geometry.name}: {title}")
        if map_yx is None:
            for ax in (occupancy_ax, bad_ax):
                ax.text(0, 0, f"no {geometry.name} map\nfor this LS", ha="center", va="center")
            continue
        image = _image_kwargs(geometry)
        reconstruction = roc_maps[ring]["reconstruction"]
        live = reconstruction > 0
        top = float(np.percentile(np.concatenate([map_yx[live], reconstruction[live]]), 99.5))
        shown = occupancy_ax.imshow(
            np.ma.masked_where(~live & (map_yx == 0), map_yx),
            vmin=0.0,
            vmax=max(top, 1.0),
            cmap="viridis",
            **image,
        )
        fig.colorbar(shown, ax=occupancy_ax, label="clusters per ROC", shrink=0.7, pad=0.01)
        state = np.where(roc_maps[ring]["bad"], 2, np.where(live, 1, 0))
        bad = bad_ax.imshow(state, cmap=states, vmin=-0.5, vmax=2.5, **image)
        bar = fig.colorbar(bad, ax=bad_ax, ticks=[0, 1, 2], shrink=0.7, pad=0.01)
        bar.ax.set_yticklabels(["no data expected", "live ROC", "bad ROC"])
    verdict = "flagged" if flag else "not flagged"
    names = describe_groups(np.asarray(GROUP_NAMES)[np.asarray(anomalous_groups, bool)])
    judged = " + ".join(geometries[r].name for r in rings if maps.get(r) is not None)
    fig.suptitle(
        f"Whole forward pixel (joint model, judged on {judged}): Run {run}, LS {ls} — "
        f"{anomaly_type}, Metric {metric:.2f} ({verdict})"
        + (f"\nanomalous power groups: {names}" if names else "\nno anomalous power group")
        + (f"; {dcs_note}" if dcs_note else ""),
        fontsize=13,
    )
    return fig


def _image_kwargs(geometry: RingGeometry = RING2) -> dict:
    return {
        "origin": "lower",
        "extent": extent(geometry),
        "aspect": "auto",
        "interpolation": "nearest",
    }


def era_run_figure(
    results: pd.DataFrame, run: int, persistent_groups: Sequence[str] = ()
) -> Figure:
    """One run of an era: Metric and pileup against LS, DCS-bad LS shaded, anomalous groups.

    `results` are the per-LS results `era` writes (lumisections.parquet), all runs or one;
    `persistent_groups` the run's groups in `era`'s persistent table (named in the title).
    """
    plt = _pyplot()
    from matplotlib.patches import Patch

    lumis = results[results.run == run].sort_values("ls")
    if lumis.empty:
        raise ValueError(f"run {run} is not in the era results")
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(13, 8), sharex=True, height_ratios=(1, 1.3), constrained_layout=True
    )
    ls = lumis.ls.to_numpy()
    for ax in (top, bottom):
        for first, last in _stretches(ls, ~lumis.dcs_good.to_numpy()):
            ax.axvspan(first - 0.5, last + 0.5, color="0.8", lw=0, zorder=0)
    top.plot(ls, lumis.metric, color="0.25", lw=0.8, label="Metric")
    for kind, colour in TYPE_COLOURS.items():
        hit = lumis[(lumis.type == kind) & lumis.dcs_good]
        top.scatter(hit.ls, hit.metric, s=14, color=colour, zorder=3, label=f"{kind} LS")
    flagged = lumis[lumis.flag]
    top.scatter(
        flagged.ls, flagged.metric, s=60, facecolors="none", edgecolors="k", lw=0.8, zorder=4
    )
    top.set_ylabel("Metric")
    highest = max(float(lumis.metric.max()), 1.0)  # a healthy run still shows the scale
    top.set_ylim(-0.05 * highest, 1.1 * highest)
    handles, _ = top.get_legend_handles_labels()
    handles.append(
        plt.Line2D([], [], marker="o", ls="", mfc="none", mec="k", label="flagged (Flag)")
    )
    if lumis.pileup.notna().any():
        pileup = top.twinx()
        pileup.plot(ls, lumis.pileup, color="#1f77b4", lw=1.0, alpha=0.7)
        pileup.set_ylabel("pileup (OMS)", color="#1f77b4")
        pileup.tick_params(axis="y", colors="#1f77b4")
        pileup.set_ylim(bottom=0)
        handles.append(plt.Line2D([], [], color="#1f77b4", label="pileup"))
    handles.append(Patch(color="0.8", label="DCS-bad LS"))
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, ncols=len(handles))

    _group_raster(bottom, lumis)
    bottom.set_xlabel("lumisection")
    good = lumis[lumis.dcs_good]
    counts = ", ".join(
        f"{kind} {int((good.type == kind).sum())}"
        for kind in TYPE_COLOURS
        if kind in set(good.type)
    )
    persistent = (
        f"\npersistent (most DCS-good LS): {describe_groups(persistent_groups)}"
        if len(persistent_groups)
        else ""
    )
    fig.suptitle(
        f"Run {run}: {len(lumis)} LS, {len(good)} DCS-good, {int(lumis.flag.sum())} flagged"
        + (f"; anomalous DCS-good LS: {counts}" if counts else "; no anomalous DCS-good LS")
        + persistent,
        fontsize=12,
    )
    return fig


def _group_raster(ax: Axes, lumis: pd.DataFrame) -> None:
    """Each anomalous (LS, power group) as a mark, coloured by the LS's type."""
    row_of = {name: i for i, name in enumerate(GROUP_NAMES)}
    hit = lumis[lumis.groups != ""]
    for kind, colour in TYPE_COLOURS.items():
        part = hit[hit.type == kind]
        xs, ys = [], []
        for ls, groups in zip(part.ls, part.groups, strict=True):
            for name in groups.split(";"):
                xs.append(ls)
                ys.append(row_of[name])
        ax.scatter(xs, ys, marker="|", s=40, color=colour, lw=1.5)
    ax.set_ylim(-1.0, len(GROUP_NAMES))  # room for the marks of the first and last group
    # one tick per (shell, disk) block of 4 ROGs, at its middle
    first_of_block = range(0, len(GROUP_NAMES), 4)
    ax.set_yticks([g + 1.5 for g in first_of_block])
    ax.set_yticklabels([short_group_name(GROUP_NAMES[g])[:6] for g in first_of_block], fontsize=7)
    ax.set_yticks(range(len(GROUP_NAMES)), minor=True)
    for g in first_of_block[1:]:
        ax.axhline(g - 0.5, color="0.5" if g % 12 == 0 else "0.88", lw=0.6, zorder=0.6)
    ax.set_ylabel("anomalous power group (shell, disk; ROG1-4 upwards)")
    ax.grid(axis="x", color="0.9")


def _stretches(ls: np.ndarray, mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) LS of each run of consecutive True values of `mask`."""
    stretches: list[tuple[int, int]] = []
    for i in np.flatnonzero(mask):
        if stretches and ls[i] == stretches[-1][1] + 1:
            stretches[-1] = (stretches[-1][0], int(ls[i]))
        else:
            stretches.append((int(ls[i]), int(ls[i])))
    return stretches


FIGURE_SUFFIXES = (".png", ".pdf")


def figure_paths(path, labels: Sequence[object]) -> list:
    """Where figures labelled `labels` go: a PDF is one file of pages; PNGs are one file each,
    named `<stem>_<label>.png` (an era's runs: `era_390001.png`) when there are several."""
    from pathlib import Path

    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise OptionError(f"{path}: the figure file must end in .png or .pdf")
    if path.suffix.lower() == ".pdf" or len(labels) <= 1:
        return [path]
    return [path.with_stem(f"{path.stem}_{label}") for label in labels]


def save_figures(figures: Sequence[Figure], path, labels: Sequence[object] = ()) -> list:
    """PDF: one page per figure in one file; PNG: one file each (`figure_paths`), atomically."""
    from pathlib import Path

    plt = _pyplot()
    path = Path(path)
    labels = list(labels) or list(range(1, len(figures) + 1))
    targets = figure_paths(path, labels)
    if path.suffix.lower() == ".pdf":
        from matplotlib.backends.backend_pdf import PdfPages

        def write_pdf(partial: Path) -> None:
            with PdfPages(partial) as pdf:
                for fig in figures:
                    pdf.savefig(fig)

        write_atomically(path, write_pdf)
    else:
        for fig, target in zip(figures, targets, strict=True):
            write_atomically(target, lambda partial, fig=fig: fig.savefig(partial, dpi=110))
    for fig in figures:
        plt.close(fig)
    return targets
