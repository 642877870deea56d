"""`pixelring2nmf plot`: every figure type rendered from a real era, files and content checked."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, cli_command

from mlserver_model.dftools import DCS_FLAGS
from mlserver_model.geometry import GROUP_NAMES
from mlserver_model.pixelring2nmf import PixelRing2NMF
from pixelring2nmf.cli import main as cli_main
from pixelring2nmf.plots.draw import lumisection_figure, short_group_name
from pixelring2nmf.plots.figures import find_lumisection

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pick(era_out: Path, kind: str) -> pd.Series:
    results = pd.read_parquet(era_out / "lumisections.parquet")
    good = results[results.dcs_good & (results.type == kind)]
    assert len(good), f"the test era has no DCS-good {kind} LS"
    return good.iloc[len(good) // 2]


def _check_png(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(path)
    assert image.shape[0] > 600 and image.shape[1] > 1000
    assert image[..., :3].std() > 0.05  # not a blank canvas
    return image


@pytest.mark.parametrize("kind", ["Multi-Disk", "Quarter", "Single-Disk", "none"])
def test_plot_one_ls_of_each_type(era_sim, era_out, model_path, tmp_path, kind) -> None:
    row = _pick(era_out, kind)
    out = tmp_path / f"{kind}.png"
    args = ["plot", "--parquet", str(era_sim["parquet"]), "--oms", str(era_sim["oms"])]
    args += ["--model", str(model_path), "--run", str(row.run), "--ls", str(row.ls)]
    assert cli_main([*args, "--out", str(out)]) == 0
    _check_png(out)


def test_ls_figure_says_what_the_model_found(era_sim, era_out, model_path) -> None:
    row = _pick(era_out, "Multi-Disk")
    map_yx = find_lumisection([era_sim["parquet"]], int(row.run), int(row.ls))
    model = PixelRing2NMF.load(model_path)
    result = model.predict(map_yx[None], roc_maps=True)
    figure = lumisection_figure(
        map_yx,
        {name: maps[0] for name, maps in result.roc_maps.items()},
        result.anomalous_groups[0],
        run=int(row.run),
        ls=int(row.ls),
        anomaly_type=str(result.anomaly_type[0]),
        metric=float(result.metric[0]),
        flag=bool(result.flag[0]),
    )
    title = figure._suptitle.get_text()
    assert f"Run {row.run}, LS {row.ls} — Multi-Disk, Metric {row.metric:.2f}" in title
    panels, colour_bars = figure.axes[:4], figure.axes[4:]
    assert len(colour_bars) == 3
    bad_rocs = panels[3]
    outlined = [p.get_gid() for p in bad_rocs.patches if (p.get_gid() or "").startswith("power")]
    assert outlined == [f"power-group:{g}" for g in GROUP_NAMES]
    named = {t.get_text() for t in bad_rocs.texts}
    expected = {short_group_name(g) for g in row.groups.split(";")}
    assert named == expected and len(expected) >= 2
    assert [t.get_text() for t in bad_rocs.get_xticklabels()][:3] == ["-3", "-2", "-1"]
    import matplotlib.pyplot as plt

    plt.close(figure)


def test_era_pages_as_png_and_multipage_pdf(era_out, tmp_path) -> None:
    runs = pd.read_csv(era_out / "run_summary.csv").Run_Number.tolist()[:2]
    png = tmp_path / "run.png"
    assert cli_main(["plot", "--era", str(era_out), "--runs", str(runs[0]), "--out", str(png)]) == 0
    _check_png(png)
    pdf = tmp_path / "era.pdf"
    command = ["plot", "--era", str(era_out), "--runs", *map(str, runs), "--out", str(pdf)]
    assert cli_main(command) == 0
    content = pdf.read_bytes()
    assert content.startswith(b"%PDF") and b"/Count 2" in content


def test_plot_of_an_absent_ls_is_a_clear_error(era_sim, tmp_path) -> None:
    done = subprocess.run(
        cli_command(
            "plot",
            "--parquet",
            str(era_sim["parquet"]),
            "--run",
            "1",
            "--ls",
            "1",
            "--out",
            str(tmp_path / "x.png"),
        ),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert "run 1, LS 1 is not in" in done.stderr and "Traceback" not in done.stderr


def test_era_page_names_persistent_groups_and_draws_without_oms(era_out) -> None:
    import matplotlib.pyplot as plt

    from pixelring2nmf.plots.draw import era_run_figure

    results = pd.read_parquet(era_out / "lumisections.parquet").assign(pileup=np.nan)
    run = int(results.run.iloc[0])
    figure = era_run_figure(results, run, ["FPix_BpI_D2_ROG3"])
    title = figure._suptitle.get_text()
    assert (
        title.startswith(f"Run {run}: ") and "persistent (most DCS-good LS): BpI D2 ROG3" in title
    )
    assert len(figure.axes) == 2  # no pileup axis without OMS pileup
    plt.close(figure)
    # every anomaly type the model can report has a colour on these pages
    from mlserver_model.geometry import ANOMALY_NONE, ANOMALY_TYPES
    from pixelring2nmf.plots.draw import TYPE_COLOURS

    assert set(TYPE_COLOURS) == set(ANOMALY_TYPES) - {ANOMALY_NONE}


def test_era_png_pages_are_named_by_run_and_never_overwritten(era_out, tmp_path, capsys) -> None:
    runs = pd.read_csv(era_out / "run_summary.csv").Run_Number.tolist()[:2]
    png = tmp_path / "era.png"
    command = ["plot", "--era", str(era_out), "--runs", *map(str, runs), "--out", str(png)]
    assert cli_main(command) == 0
    pages = sorted(p.name for p in tmp_path.glob("era_*.png"))
    assert pages == [f"era_{run}.png" for run in sorted(runs)]
    before = (tmp_path / pages[0]).stat().st_mtime_ns
    assert cli_main(command) == 2
    assert f"{tmp_path / pages[0]} exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / pages[0]).stat().st_mtime_ns == before
    assert cli_main([*command, "--force"]) == 0


def test_an_ls_without_oms_data_is_not_called_dcs_bad(
    era_sim, era_out, model_path, tmp_path, capsys
) -> None:
    """An OMS file of other runs says nothing about the detector: the figure must not say it
    was off."""
    row = _pick(era_out, "none")
    columns = json.loads(era_sim["oms"].read_text())
    columns["run_number"] = [run + 1000 for run in columns["run_number"]]
    other = tmp_path / "omsdata_other_runs.json"
    other.write_text(json.dumps(columns))
    args = ["plot", "--parquet", str(era_sim["parquet"]), "--oms", str(other)]
    args += ["--model", str(model_path), "--run", str(row.run), "--ls", str(row.ls)]
    figure = tmp_path / "ls.png"
    assert cli_main([*args, "--out", str(figure)]) == 0
    out = capsys.readouterr().out
    assert f"[WARNING]: no OMS data for run {row.run}, LS {row.ls}" in out
    from pixelring2nmf.io.oms import OmsLookup
    from pixelring2nmf.plots.figures import dcs_note

    note = dcs_note(OmsLookup.read([other]), int(row.run), int(row.ls), list(DCS_FLAGS))
    assert note.text == "no OMS data for this LS" and "DCS bad" not in note.text
    good = dcs_note(OmsLookup.read([era_sim["oms"]]), int(row.run), int(row.ls), [])
    assert good.text.startswith("DCS good; pileup ")
    assert cli_main([*args, "--out", str(figure)]) == 2  # exists: --force needed
