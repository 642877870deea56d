"""Geometry of the FPix cluster-occupancy MEs of both rings, as data (masks and index arrays).

One `RingGeometry` per ring, computed once at import from the facts of docs/domain.md (sections 2
and 11) and never mutated, so inference code reduces over fixed index arrays instead of parsing
names per LS. The two rings share the disk columns, the 48 power-group names and their order,
the quarters and the Multi-Disk candidates; they differ in the number of blades (17 and 11 per
half-disk), hence the map's rows, the cross's rows, and each group's blade range. The model file
names its ring by its geometry version, and the pipeline takes every shape from that ring.

Two coordinate systems per ring:
- *map*: the ME as DIALS stores it, (rows, 56 columns) = (signed blade-panel, signed disk):
  (140, 56) for Ring 2, (92, 56) for Ring 1;
- *model*: the map without the always-empty cross: (136, 48) = 6528 ROCs, (88, 48) = 4224 ROCs.

The module-level names without a ring (MAP_SHAPE, GROUP_ID_MAP, roc_name, ...) are Ring 2's, as
they were before Ring 1 existed, so Ring 2 code reads as it always did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ME_PREFIX = (
    "PixelPhase1/Phase1_MechanicalView/PXForward/"
    "clusters_per_SignedDiskCoord_per_SignedBladePanelCoord_PXRing_"
)
ROCS_PER_DISK_COLUMN = 8  # ROC columns along a module: one disk slot is 8 bins wide
ROWS_PER_BLADE = 4  # 2 panels x 2 ROC rows
CROSS_COLUMNS = slice(24, 32)  # disk slot 0, in both rings
N_COLUMNS = 56  # 7 disk slots (-3..3) x 8

DISKS = (-3, -2, -1, 1, 2, 3)  # model-space order of the six disk column blocks
Z_SIDES = ("m", "p")  # m = negative disks (-z), p = positive disks (+z)
BLADE_SIDES = ("O", "I")  # O = negative blades, I = positive blades
N_GROUPS = 48


def _group_index(z_side: int, blade_side: int, abs_disk: int, rog: int) -> int:
    """Position of a power group in the canonical order (z side, blade side, |disk|, ROG)."""
    return ((z_side * 2 + blade_side) * 3 + (abs_disk - 1)) * 4 + (rog - 1)


def _group_names() -> tuple[str, ...]:
    names = [""] * N_GROUPS
    for z_side, z_name in enumerate(Z_SIDES):
        for blade_side, side_name in enumerate(BLADE_SIDES):
            for abs_disk in (1, 2, 3):
                for rog in (1, 2, 3, 4):
                    g = _group_index(z_side, blade_side, abs_disk, rog)
                    names[g] = f"FPix_B{z_name}{side_name}_D{abs_disk}_ROG{rog}"
    return tuple(names)


GROUP_NAMES_TUPLE = _group_names()
GROUP_NAMES = list(GROUP_NAMES_TUPLE)
GROUP_NAMES_ARRAY = np.array(GROUP_NAMES)
GROUP_DISK = np.array(
    [(1 if name[6] == "p" else -1) * int(name[10]) for name in GROUP_NAMES], dtype=np.int8
)
GROUP_ROG = np.array([int(name[-1]) for name in GROUP_NAMES], dtype=np.int8)


@dataclass(frozen=True, eq=False)
class RingGeometry:
    """Everything about one ring's map that inference, training, plots and tables need.

    Built from three facts (the ring number, the blades per half-disk, the ROG blade ranges);
    the rest is derived in `__post_init__`. Instances are compared by identity: there is one
    per ring (`RING1`, `RING2`, `ring_geometry`).
    """

    ring: int
    n_blades: int  # blades per half-disk: 17 (Ring 2) or 11 (Ring 1)
    rog_blades: dict[int, tuple[int, int]]  # ROG number -> first and last |blade|
    version: str  # the model file's geometry_version for this ring
    me: str = field(init=False)
    map_shape: tuple[int, int] = field(init=False)
    model_shape: tuple[int, int] = field(init=False)
    n_rocs: int = field(init=False)
    cross_rows: slice = field(init=False)
    blades: tuple[int, ...] = field(init=False)
    model_rows_in_map: np.ndarray = field(init=False)
    model_columns_in_map: np.ndarray = field(init=False)
    group_id_map: np.ndarray = field(init=False)  # (rows, 56) int16, -1 at the cross
    group_id_model: np.ndarray = field(init=False)
    group_id_flat: np.ndarray = field(init=False)
    group_n_rocs: np.ndarray = field(init=False)
    group_rocs_model: tuple[np.ndarray, ...] = field(init=False)
    group_row_starts_model: np.ndarray = field(init=False)
    group_of_block: np.ndarray = field(init=False)
    block_of_group: np.ndarray = field(init=False)
    _map_row_block_indicator: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: derived fields are set once, here
        n_rows = 2 * ROWS_PER_BLADE * self.n_blades + ROWS_PER_BLADE
        centre = ROWS_PER_BLADE * self.n_blades
        put(self, "me", f"{ME_PREFIX}{self.ring}")
        put(self, "map_shape", (n_rows, N_COLUMNS))
        put(self, "model_shape", (n_rows - ROWS_PER_BLADE, N_COLUMNS - ROCS_PER_DISK_COLUMN))
        put(self, "n_rocs", self.model_shape[0] * self.model_shape[1])
        put(self, "cross_rows", slice(centre, centre + ROWS_PER_BLADE))
        put(self, "blades", tuple(b for b in range(-self.n_blades, self.n_blades + 1) if b))
        put(self, "model_rows_in_map", np.r_[0:centre, centre + ROWS_PER_BLADE : n_rows])
        put(self, "model_columns_in_map", np.r_[0 : CROSS_COLUMNS.start, CROSS_COLUMNS.stop : 56])
        group_id_map = np.full(self.map_shape, -1, dtype=np.int16)
        for g, name in enumerate(GROUP_NAMES):
            first, last = self.rog_blades[int(GROUP_ROG[g])]
            sign = -1 if name[7] == "O" else 1
            rows = np.concatenate(
                [np.arange(*self._rows(sign * b)) for b in range(first, last + 1)]
            )
            group_id_map[rows, self.disk_columns(int(GROUP_DISK[g]))] = g
        put(self, "group_id_map", group_id_map)
        group_id_model = group_id_map[np.ix_(self.model_rows_in_map, self.model_columns_in_map)]
        put(self, "group_id_model", group_id_model)
        put(self, "group_id_flat", group_id_model.ravel())
        put(self, "group_n_rocs", np.bincount(self.group_id_flat, minlength=N_GROUPS))
        put(
            self,
            "group_rocs_model",
            tuple(np.flatnonzero(self.group_id_flat == g) for g in range(N_GROUPS)),
        )
        # Every group is a block of model rows (one blade range) x 8 model columns (one disk),
        # so sums per group are a reduceat over 8 row blocks, then over 6 column blocks of 8.
        starts = np.flatnonzero(np.diff(group_id_model[:, 0], prepend=-1))
        put(self, "group_row_starts_model", starts)
        group_of_block = group_id_model[starts][:, ::ROCS_PER_DISK_COLUMN]  # (8, 6)
        put(self, "group_of_block", group_of_block)
        put(self, "block_of_group", np.argsort(group_of_block.ravel()))
        # The same blocks in map space: blade-range row blocks (the cross rows belong to none).
        indicator = np.zeros((len(starts), n_rows), dtype=np.float32)
        ends = np.r_[starts, self.model_shape[0]]
        for b, start in enumerate(starts):
            indicator[b, self.model_rows_in_map[start : ends[b + 1]]] = 1.0
        put(self, "_map_row_block_indicator", indicator)

    # ---- names -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """'Ring 1' or 'Ring 2', as the original's tables write it."""
        return f"Ring {self.ring}"

    @property
    def input_name(self) -> str:
        """The V2 input tensor DIALS sends this ring's maps in: 'Ring1' or 'Ring2'."""
        return f"Ring{self.ring}"

    # ---- places ------------------------------------------------------------------------------
    def disk_columns(self, disk: int) -> slice:
        """Map columns of signed disk `disk` (-3..3; 0 is the cross)."""
        start = ROCS_PER_DISK_COLUMN * disk + 24
        return slice(start, start + ROCS_PER_DISK_COLUMN)

    def _rows(self, blade: int) -> tuple[int, int]:
        start = ROWS_PER_BLADE * (blade + self.n_blades)
        return start, start + ROWS_PER_BLADE

    def blade_rows(self, blade: int) -> slice:
        """Map rows of signed blade `blade` (0 is the cross)."""
        if abs(blade) > self.n_blades:
            raise ValueError(
                f"{self.name} has blades -{self.n_blades}..{self.n_blades}, not {blade}"
            )
        return slice(*self._rows(blade))

    def roc_name(self, row: int, column: int) -> str:
        """CMSSW name of the ROC in map bin (row, column), both 0-based numpy indices.

        Follows CMSSW's dead-ROC scripts, which work with ROOT's 1-based bins (i = column + 1,
        j = row + 1), hence the (i - 1), (j - 1) below kept as in the original formula.
        """
        if not (0 <= row < self.map_shape[0] and 0 <= column < self.map_shape[1]):
            raise ValueError(
                f"Bin ({row}, {column}) is outside the {self.map_shape} {self.name} map"
            )
        i, j = column + 1, row + 1
        blade = -self.n_blades + (j - 1) // 4
        disk = -3 + (i - 1) // 8
        if blade == 0 or disk == 0:
            raise ValueError(f"Bin ({row}, {column}) is in the empty cross: it has no ROC")
        panel = 2 if (j - 1) % 4 in (0, 1) else 1
        outer_row = (j - 1) % 4 in (0, 3)
        if disk < 0:
            shell = "BmO" if blade < 0 else "BmI"
            roc = 15 - (i - 1) % 8 if outer_row else (i - 1) % 8
        else:
            shell = "BpO" if blade < 0 else "BpI"
            roc = 7 - (i - 1) % 8 if outer_row else 8 + (i - 1) % 8
        return f"FPix_{shell}_D{abs(disk)}_BLD{abs(blade)}_PNL{panel}_RNG{self.ring}_ROC{roc}"

    # ---- arrays ------------------------------------------------------------------------------
    def group_totals_map(self, maps_flat: np.ndarray) -> np.ndarray:
        """(N, rows*56) float32 map-space maps -> (N, 48) totals per power group (cross ignored).

        Two cheap products instead of one with 48 indicator columns (a third of the cost): the 8
        columns of each disk slot, then the blade-range row blocks.
        """
        n = len(maps_flat)
        per_disk_slot = (maps_flat.reshape(-1, ROCS_PER_DISK_COLUMN) @ _ONES_PER_DISK_SLOT).reshape(
            n, self.map_shape[0], -1
        )
        blocks = np.matmul(self._map_row_block_indicator, per_disk_slot)  # (N, 8, 7)
        return blocks[:, :, _MAP_DISK_SLOTS].reshape(n, -1)[:, self.block_of_group]

    def group_masks_model(self) -> np.ndarray:
        """(48, rows, 48) boolean masks, for plotting and readable tests."""
        return self.group_id_model[None, :, :] == np.arange(N_GROUPS)[:, None, None]


_MAP_DISK_SLOTS = np.array([3 + d for d in DISKS])  # disk slots 0..6 of the six disks
_ONES_PER_DISK_SLOT = np.ones(ROCS_PER_DISK_COLUMN, dtype=np.float32)

RING2 = RingGeometry(
    ring=2,
    n_blades=17,
    rog_blades={1: (1, 4), 2: (5, 8), 3: (9, 13), 4: (14, 17)},
    version="ring2-140x56-cross-removed-136x48-v1",
)
RING1 = RingGeometry(
    ring=1,
    n_blades=11,
    rog_blades={1: (1, 3), 2: (4, 6), 3: (7, 8), 4: (9, 11)},
    version="ring1-92x56-cross-removed-88x48-v1",
)
RINGS = {1: RING1, 2: RING2}
GEOMETRY_BY_VERSION = {g.version: g for g in RINGS.values()}
GEOMETRY_BY_ME = {g.me: g for g in RINGS.values()}
GEOMETRY_BY_MAP_SHAPE = {g.map_shape: g for g in RINGS.values()}


def ring_geometry(ring: int | str) -> RingGeometry:
    """The geometry of ring 1 or 2 (also given as '1', 'Ring 1', 'Ring1')."""
    text = str(ring).replace("Ring", "").strip()
    if text not in ("1", "2"):
        raise ValueError(f"Unknown FPix ring {ring!r}: the forward pixel has rings 1 and 2")
    return RINGS[int(text)]


# ---- Ring 2 under the names it had before Ring 1 existed ---------------------------------------
RING2_ME = RING2.me
RING1_ME = RING1.me
MAP_SHAPE = RING2.map_shape
MODEL_SHAPE = RING2.model_shape
N_ROCS = RING2.n_rocs
CROSS_ROWS = RING2.cross_rows
BLADES = RING2.blades
ROG_BLADES = RING2.rog_blades
MODEL_ROWS_IN_MAP = RING2.model_rows_in_map
MODEL_COLUMNS_IN_MAP = RING2.model_columns_in_map
GROUP_ID_MAP = RING2.group_id_map
GROUP_ID_MODEL = RING2.group_id_model
GROUP_ID_FLAT = RING2.group_id_flat
GROUP_N_ROCS = RING2.group_n_rocs
GROUP_ROCS_MODEL = RING2.group_rocs_model
GROUP_ROW_STARTS_MODEL = RING2.group_row_starts_model
GROUP_OF_BLOCK = RING2.group_of_block
BLOCK_OF_GROUP = RING2.block_of_group
GROUP_MASKS_MODEL = RING2.group_masks_model()
disk_columns = RING2.disk_columns
blade_rows = RING2.blade_rows
roc_name = RING2.roc_name
group_totals_map = RING2.group_totals_map

# Quarters (shells): 4 x 12 groups, in the canonical group order they are contiguous.
QUARTER_NAMES = tuple(f"B{z}{s}" for z in Z_SIDES for s in BLADE_SIDES)  # BmO, BmI, BpO, BpI
QUARTER_GROUPS = np.arange(N_GROUPS).reshape(4, 12)

# Multi-Disk candidates: the same (z side, blade side, ROG) on the 3 disks -> (16, 3) group ids.
MULTIDISK_CANDIDATES = np.array(
    [
        [_group_index(z, s, d, rog) for d in (1, 2, 3)]
        for z in range(2)
        for s in range(2)
        for rog in (1, 2, 3, 4)
    ]
)


def group_index(name: str) -> int:
    """Index of a power group given its name, e.g. 'FPix_BmO_D1_ROG2' -> 6."""
    try:
        return GROUP_NAMES.index(name)
    except ValueError:
        raise ValueError(
            f"Unknown power group {name!r}; expected a name like 'FPix_BmO_D1_ROG2'"
        ) from None


# Anomaly types of one LS, ordered by severity; the LS takes the most severe that applies. The
# codes of `anomaly_type_codes` are indices into ANOMALY_TYPES, so this order is also the codes'.
ANOMALY_NONE = "none"
ANOMALY_SINGLE_DISK = "Single-Disk"
ANOMALY_SAME_DISK = "Same-Disk"
ANOMALY_MULTI_DISK = "Multi-Disk"
ANOMALY_QUARTER = "Quarter"
ANOMALY_TYPES = (
    ANOMALY_NONE,
    ANOMALY_SINGLE_DISK,
    ANOMALY_SAME_DISK,
    ANOMALY_MULTI_DISK,
    ANOMALY_QUARTER,
)


def anomaly_type_codes(
    anomalous_groups: np.ndarray,
    unjudged_groups: np.ndarray | None = None,
    blind_groups: np.ndarray | None = None,
) -> np.ndarray:
    """Anomaly type code (index into ANOMALY_TYPES) per LS from an (N, 48) boolean array.

    A whole quarter counts when all 12 groups of one shell are anomalous, not counting groups
    that cannot be judged (`unjudged_groups`, (48,) bool: e.g. a permanently dead group, which
    would otherwise make its quarter's dropout look like a mere Multi-Disk); Multi-Disk when
    the same (z side, blade side, ROG) is anomalous on two or more disks; Same-Disk when it is
    anomalous on exactly one disk and a partner disk of that candidate cannot be judged in that
    LS (dead in the model, `unjudged_groups`, or too few live ROCs in that LS, `blind_groups`
    (N, 48)): a Multi-Disk outage may be hiding behind the blind disk, so the LS must not look
    like a plain Single-Disk one; Single-Disk otherwise when any group is anomalous.
    """
    anomalous = np.asarray(anomalous_groups, dtype=bool)
    if anomalous.ndim != 2 or anomalous.shape[1] != N_GROUPS:
        raise ValueError(f"Expected an (N, {N_GROUPS}) array of group flags, got {anomalous.shape}")
    unjudged = np.zeros(N_GROUPS, bool) if unjudged_groups is None else unjudged_groups
    whole_shell = (anomalous | unjudged)[:, QUARTER_GROUPS].all(axis=2)
    quarter = (whole_shell & anomalous[:, QUARTER_GROUPS].any(axis=2)).any(axis=1)
    per_candidate = anomalous[:, MULTIDISK_CANDIDATES]  # (N, 16, 3)
    n_disks = per_candidate.sum(axis=2)
    multi_disk = (n_disks >= 2).any(axis=1)
    blind = np.broadcast_to(unjudged, anomalous.shape)
    if blind_groups is not None:
        blind = blind | np.asarray(blind_groups, dtype=bool)
    blind_partner = (blind[:, MULTIDISK_CANDIDATES] & ~per_candidate).any(axis=2)
    same_disk = ((n_disks == 1) & blind_partner).any(axis=1)
    single = anomalous.any(axis=1)
    codes = np.zeros(len(anomalous), dtype=np.int8)
    codes[single] = ANOMALY_TYPES.index(ANOMALY_SINGLE_DISK)
    codes[same_disk] = ANOMALY_TYPES.index(ANOMALY_SAME_DISK)
    codes[multi_disk] = ANOMALY_TYPES.index(ANOMALY_MULTI_DISK)
    codes[quarter] = ANOMALY_TYPES.index(ANOMALY_QUARTER)
    return codes


def anomaly_type(
    group_names: list[str] | tuple[str, ...], unjudged_names: list[str] | tuple[str, ...] = ()
) -> str:
    """Anomaly type of one LS given the names of its anomalous power groups (and of the
    groups that cannot be judged, e.g. a permanently dead one)."""
    flags = np.zeros((1, N_GROUPS), dtype=bool)
    flags[0, [group_index(n) for n in group_names]] = True
    unjudged = np.zeros(N_GROUPS, dtype=bool)
    unjudged[[group_index(n) for n in unjudged_names]] = True
    return ANOMALY_TYPES[anomaly_type_codes(flags, unjudged)[0]]
