"""Which ring a model judges and which ring a file holds, and the one-line refusal when they differ.

A file's ring is read from its ME and binning (io/parquet.py), a model's from its file's
geometry version (a one-ring `PixelRing2NMF`, or a `JointNMF` of both rings). Every command that
puts data before a model (train, predict, era, plot, stats, compare) checks the two here, before
any map is judged: a Ring 1 map fed to a Ring 2 model is not an anomaly, it is a wrong input.

The tables name the ring as the original's do: `Ring_Num` 1 or 2 and `Row/Quarter` 'Ring 1' or
'Ring 2'. A joint model's rows come from the evidence of both rings, which the original never
had, so they say so: `Ring_Num` '1+2' and 'Ring 1+2' (JOINT_RING_NUM, JOINT_RING_NAME).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlserver_model.geometry import RING2, RINGS, RingGeometry

from ..errors import DataError, OptionError

JOINT_RING_NUM = "1+2"
JOINT_RING_NAME = "Ring 1+2"


@dataclass(frozen=True)
class TableRing:
    """How the era tables name the ring(s) of their rows: `Ring_Num` and `Row/Quarter`."""

    number: int | str
    name: str

    @classmethod
    def of_rings(cls, rings: Sequence[int]) -> TableRing:
        rings = tuple(sorted(set(rings)))
        if len(rings) == 1:
            return cls(rings[0], RINGS[rings[0]].name)
        return cls(JOINT_RING_NUM, JOINT_RING_NAME)


RING2_TABLES = TableRing(RING2.ring, RING2.name)  # the tables as they always were


def model_rings(model: object) -> tuple[int, ...]:
    """The rings a model judges: (1,), (2,) or (1, 2) for a joint model."""
    return tuple(sorted(geometry.ring for geometry in model.geometries))


def rings_text(rings: Iterable[int]) -> str:
    """(1,) -> 'Ring 1'; (1, 2) -> 'Ring 1+2'."""
    return TableRing.of_rings(tuple(rings)).name


def describe_model(model: object, path: str | Path | None = None) -> str:
    """'the Ring 2 model m.joblib', 'the joint (Ring 1+2) model fpix.joblib'."""
    rings = model_rings(model)
    kind = f"joint ({rings_text(rings)})" if len(rings) > 1 else rings_text(rings)
    return f"the {kind} model" + (f" {path}" if path is not None else "")


def check_file_ring(
    geometry: RingGeometry, rings: Sequence[int], source: str | Path, model_text: str
) -> None:
    """Refuse, in one line, a file whose ring the model does not judge."""
    if geometry.ring in rings:
        return
    from ..io.parquet import check_first_rows_binning

    check_first_rows_binning(source, geometry)  # ME and binning disagree: not of a ring
    rows, columns = geometry.map_shape
    raise DataError(
        f"{source} holds {geometry.name} maps ({rows} x {columns}, ME ..._PXRing_{geometry.ring})"
        f", but {model_text} judges {rings_text(rings)}: give a {geometry.name} model "
        f"(`train --parquet` on {geometry.name} files)"
        + (", or a joint model (`train --joint`) with both rings' files" if len(rings) == 1 else "")
    )


def file_geometry(source: str | Path) -> RingGeometry:
    """The ring of a DIALS parquet, from its footer and first row (io.parquet)."""
    from ..io.parquet import parquet_geometry

    return parquet_geometry(source)


def sources_by_ring(sources: Sequence[str | Path]) -> dict[int, list[str | Path]]:
    """The files of each ring, each list in the order given."""
    by_ring: dict[int, list[str | Path]] = {}
    for source in sources:
        by_ring.setdefault(file_geometry(source).ring, []).append(source)
    return by_ring


def check_sources(
    sources: Sequence[str | Path], model: object, model_text: str
) -> dict[int, list[str | Path]]:
    """The files by ring, every one checked against the model's rings (DataError, one line)."""
    rings = model_rings(model)
    by_ring = sources_by_ring(sources)
    for ring, files in sorted(by_ring.items()):
        check_file_ring(RINGS[ring], rings, files[0], model_text)
    return by_ring


def check_joint_option(joint: bool, by_ring: dict[int, list]) -> None:
    """`train`: one ring without --joint, both with it."""
    rings = sorted(by_ring)
    if joint and rings != [1, 2]:
        raise OptionError(
            f"--joint needs files of both rings; all given hold {rings_text(rings)} maps"
        )
    if not joint and len(rings) > 1:
        raise OptionError(
            f"the --parquet files hold Ring 1 maps ({by_ring[1][0]}, ...) and Ring 2 maps "
            f"({by_ring[2][0]}, ...): train one ring at a time, or one joint model with --joint"
        )
