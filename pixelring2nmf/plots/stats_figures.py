"""The figures of `pixelring2nmf stats`: where in Ring 2 the anomalies fall, and at which pileup.

- the heatmap draws the 48 power groups where they are in the DQM map (x: disk -3..+3, y:
  blade -17..+17, each group a block of one disk x one ROG's blades, the quarters BmO, BmI,
  BpO, BpI in the four corners), one panel for every type together and one per type found,
  each block coloured by and annotated with its anomalous LS; the groups that cannot be judged
  are hatched grey and named, never drawn as a healthy zero;
- the histogram: anomalous LS per group, stacked by type, the groups in canonical order
  (shell, disk, ROG), dead ones marked;
- the pileup of the anomalous LS against that of all DCS-good LS, both normalised (density),
  so that the shapes compare: anomalies that come with high pileup (or early in a fill) show
  as a shifted histogram. Without OMS data the pileup is unknown, and the figure says so.

matplotlib is imported inside the functions (draw._pyplot), as everywhere in plots/.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlserver_model.geometry import GROUP_NAMES, RING2, RingGeometry

from ..era.stats import SAME_DISK
from .draw import TYPE_COLOURS, _group_box, _pyplot, ring2_axes, short_group_name

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLOURS = {**TYPE_COLOURS, SAME_DISK: "#8c564b"}
DEAD_FACE = "0.82"
MIN_LS_PER_TYPE_CURVE = 20  # fewer anomalous LS of one type: no curve of its own (noise)
EXTRA_COLOURS = ("#17becf", "#bcbd22", "#7f7f7f", "#e377c2")
QUARTER_CORNERS = {  # quarter -> (x, y) of its label: -z disks left, negative (O) blades down
    "BmO": (-3.45, -17.4),
    "BmI": (-3.45, 17.4),
    "BpO": (3.45, -17.4),
    "BpI": (3.45, 17.4),
}


def _colour(kind: str, i: int) -> str:
    return COLOURS.get(kind, EXTRA_COLOURS[i % len(EXTRA_COLOURS)])


def _types(table: pd.DataFrame) -> list[str]:
    columns = [c for c in table.columns if c.endswith("_LS") and c != "Anomalous_LS"]
    return [c.removesuffix("_LS") for c in columns]


def _dead_names(dead: pd.DataFrame, kind: str | None = None) -> list[str]:
    rows = dead if kind is None else dead[dead.Kind == kind]
    return list(dict.fromkeys(rows.Powergroup))


def _dead_note(table: pd.DataFrame, dead: pd.DataFrame) -> str:
    unjudged = table.Powergroup[table.Anomalous_LS.isna()].tolist()
    persistent = _dead_names(dead, "persistent")
    parts = []
    if unjudged:
        parts.append(
            "left out, the model cannot judge them: "
            + ", ".join(short_group_name(g) for g in unjudged)
        )
    if persistent:
        parts.append(
            "not counted in the runs where they were persistent (dead most of the run): "
            + ", ".join(short_group_name(g) for g in persistent)
        )
    return "\n".join(parts) or "no known-dead group"


def heatmap_figure(
    table: pd.DataFrame, dead: pd.DataFrame, title: str, geometry: RingGeometry = RING2
) -> Figure:
    """The groups in the detector layout, anomalous LS per group: all types, then each type
    (the layout of the era's ring: blades +-17, or +-11 for Ring 1)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    types = [k for k in _types(table) if table[f"{k}_LS"].fillna(0).sum() > 0]
    panels = [("all types", "Anomalous_LS"), *[(k, f"{k}_LS") for k in types]]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(1.2 + 3.3 * len(panels), 8.2),
        sharey=True,
        constrained_layout=True,
        squeeze=False,
    )
    for i, (ax, (label, column)) in enumerate(zip(axes[0], panels, strict=True)):
        image = _heat_panel(
            ax, table, column, colour=None if i == 0 else _colour(label, i), geometry=geometry
        )
        ax.set_title(f"{label}: {int(table[column].fillna(0).sum()):,} (LS x group)", fontsize=10)
        ring2_axes(ax, blade_labels=False, geometry=geometry)
        _rog_ticks(ax, i == 0, geometry)
        bar = fig.colorbar(
            image, ax=ax, location="bottom", shrink=0.85, pad=0.01, label="anomalous LS"
        )
        bar.locator = MaxNLocator(nbins=5, integer=True)
        bar.update_ticks()
    fig.suptitle(f"{title}\n{_dead_note(table, dead)}", fontsize=10)
    return fig


def _heat_panel(
    ax: Axes,
    table: pd.DataFrame,
    column: str,
    colour: str | None,
    geometry: RingGeometry = RING2,
):
    """One panel: each group a block filled by its count (log-like via PowerNorm), annotated."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, PowerNorm
    from matplotlib.patches import Rectangle

    values = table[column].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    top = max(float(np.nanmax(values)) if np.isfinite(values).any() else 0.0, 1.0)
    cmap = (
        colormaps["viridis"]
        if colour is None
        else LinearSegmentedColormap.from_list(column, ["#ffffff", colour])
    )
    norm = PowerNorm(0.5, vmin=0.0, vmax=top)
    for g in range(len(GROUP_NAMES)):
        x0, y0, width, height = _group_box(g, geometry)
        value = values[g]
        if np.isnan(value):
            ax.add_patch(
                Rectangle((x0, y0), width, height, fc=DEAD_FACE, ec="0.35", lw=0.5, hatch="///")
            )
            ax.text(x0 + 0.5, y0 + height / 2, "dead", ha="center", va="center", fontsize=7)
            continue
        face = cmap(norm(value)) if value > 0 else "white"
        ax.add_patch(Rectangle((x0, y0), width, height, fc=face, ec="0.35", lw=0.5))
        # viridis is dark at the low end, the one-colour maps at the high end
        level = float(norm(value))
        dark = level < 0.6 if colour is None else level > 0.75
        text_colour = "white" if value > 0 and dark else "black"
        ax.text(
            x0 + 0.5,
            y0 + height / 2,
            f"{int(value)}",
            ha="center",
            va="center",
            fontsize=8,
            color=text_colour if value > 0 else "0.6",
        )
    for quarter, (x, y) in QUARTER_CORNERS.items():
        y = float(np.sign(y)) * (geometry.n_blades + 0.4)  # the corner of the ring's map
        ax.text(
            x,
            y,
            quarter,
            ha="left" if x < 0 else "right",
            va="bottom" if y < 0 else "top",
            fontsize=8,
            fontweight="bold",
            color="0.2",
            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
            zorder=5,
        )
    return ScalarMappable(norm=norm, cmap=cmap)


def _rog_ticks(ax: Axes, labels: bool, geometry: RingGeometry = RING2) -> None:
    """ROG blocks on y (O = negative blades below, I = positive above), with their blades."""
    ticks, names = [], []
    for side, sign in (("O", -1), ("I", 1)):
        for rog, (first, last) in geometry.rog_blades.items():
            ticks.append(sign * (first + last) / 2)
            names.append(f"{side} ROG{rog}\nblades {sign * first:+d}..{sign * last:+d}")
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_yticks([], minor=True)
    ax.tick_params(axis="y", labelleft=labels)
    if labels:
        ax.set_ylabel("blade side (O: blades < 0, I: blades > 0) and readout group")


def histogram_figure(table: pd.DataFrame, dead: pd.DataFrame, title: str) -> Figure:
    """Anomalous LS per group, stacked by type; dead groups marked on the axis."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    types = _types(table)
    x = np.arange(len(GROUP_NAMES))
    fig, ax = plt.subplots(figsize=(14, 5.5), constrained_layout=True)
    bottom = np.zeros(len(x))
    for i, kind in enumerate(types):
        counts = table[f"{kind}_LS"].astype("Float64").fillna(0).to_numpy(dtype=float)
        if counts.sum() == 0:  # a type with no LS would only crowd the legend
            continue
        ax.bar(x, counts, bottom=bottom, color=_colour(kind, i), label=kind, width=0.8)
        bottom += counts
    unjudged = table.Anomalous_LS.isna().to_numpy()
    for g in np.flatnonzero(unjudged):
        ax.axvspan(g - 0.45, g + 0.45, color=DEAD_FACE, hatch="///", ec="0.5", lw=0)
        ax.text(g, 0, " dead", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [short_group_name(n) for n in GROUP_NAMES], rotation=90, fontsize=7)
    for block in range(12, len(x), 12):  # quarters
        ax.axvline(block - 0.5, color="0.4", lw=0.8)
    for block in range(4, len(x), 4):  # disks inside a quarter
        if block % 12:
            ax.axvline(block - 0.5, color="0.85", lw=0.5)
    ax.set_xlim(-0.6, len(x) - 0.4)
    ax.set_ylim(0, max(float(bottom.max()), 1.0) * 1.08)  # the highest bar below the frame
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of LS: no 2.5 LS ticks
    ax.set_ylabel("anomalous LS")
    ax.set_xlabel("power group (quarter, disk, ROG)")
    if bottom.any():
        ax.legend(title="type", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no anomalous LS", ha="center", va="center", transform=ax.transAxes)
    ax.grid(axis="y", color="0.92")
    ax.set_axisbelow(True)
    ax.set_title(f"{title}\n{_dead_note(table, dead)}", fontsize=10)
    return fig


def pileup_figure(good: pd.DataFrame, anomalous: pd.DataFrame, title: str) -> Figure:
    """Normalised pileup histograms: every DCS-good LS, the anomalous LS, and each type."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    good_pu = pd.to_numeric(good.pileup, errors="coerce").dropna().to_numpy()
    hit_pu = anomalous.assign(pileup=pd.to_numeric(anomalous.pileup, errors="coerce")).dropna(
        subset=["pileup"]
    )
    if not len(good_pu):
        ax.text(
            0.5,
            0.5,
            f"no pileup known for any of the {len(good):,} DCS-good LS:\n"
            "the era(s) were judged without OMS data (era --oms) or with OMS\n"
            "data without pileup: lumisections.* hold NaN, nothing to draw",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=11,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=10)
        return fig
    # few anomalous LS: few bins, or their histogram is noise
    n_bins = int(np.clip(1.5 * np.sqrt(max(len(hit_pu), 1)), 8, 40))
    bins = np.histogram_bin_edges(good_pu, bins=n_bins)
    ax.hist(
        good_pu,
        bins=bins,
        density=True,
        color="0.75",
        label=f"all DCS-good LS ({len(good_pu):,})",
    )
    if len(hit_pu):
        ax.hist(
            hit_pu.pileup,
            bins=bins,
            density=True,
            histtype="step",
            lw=2.2,
            color="k",
            label=f"anomalous LS, every type ({len(hit_pu):,})",
        )
        for i, (kind, part) in enumerate(hit_pu.groupby("type", sort=False)):
            if len(part) >= MIN_LS_PER_TYPE_CURVE:
                ax.hist(
                    part.pileup,
                    bins=bins,
                    density=True,
                    histtype="step",
                    lw=1.2,
                    color=_colour(str(kind), i),
                    label=f"{kind} ({len(part):,})",
                )
    missing = len(anomalous) - len(hit_pu)
    note = f"; {missing:,} anomalous LS without pileup left out" if missing else ""
    ax.set_xlabel("pileup (OMS)")
    ax.set_ylabel("fraction of LS per unit pileup (each histogram normalised)")
    ax.legend(fontsize=8)
    ax.set_title(f"{title}{note}", fontsize=10)
    return fig


def save_stats_figures(figures: dict[str, Figure], out_dir, suffix: str) -> list:
    """Each figure atomically as `<name>.<suffix>` (png or pdf)."""
    from pathlib import Path

    from ..io.atomic import write_atomically

    plt = _pyplot()
    written = []
    for name, fig in figures.items():
        target = Path(out_dir) / f"{name}.{suffix}"
        written.append(write_atomically(target, lambda p, fig=fig: fig.savefig(p, dpi=110)))
        plt.close(fig)
    return written


def stats_figures(
    table: pd.DataFrame,
    dead: pd.DataFrame,
    good: pd.DataFrame,
    anomalous: pd.DataFrame,
    labels: Sequence[str],
    geometry: RingGeometry = RING2,
) -> dict[str, Figure]:
    """The three figures, by file stem."""
    eras = ", ".join(labels)
    pileup_title = f"Pileup of anomalous and all DCS-good LS: {eras}"
    return {
        "powergroups_heatmap": heatmap_figure(
            table, dead, f"Anomalous LS per power group: {eras}", geometry
        ),
        "powergroups_histogram": histogram_figure(
            table, dead, f"Anomalous LS per power group: {eras}"
        ),
        "pileup": pileup_figure(good, anomalous, pileup_title),
    }
