"""Ring 2 geometry of the FPix cluster-occupancy ME, as data (masks and index arrays).

Everything here is computed once at import from the facts of docs/domain.md (section 2) and never
mutated, so inference code reduces over fixed index arrays instead of parsing names per LS.

Two coordinate systems:
- *map*: the ME as DIALS stores it, (140 rows, 56 columns) = (signed blade-panel, signed disk);
- *model*: the map without the always-empty cross, (136, 48) = 6528 ROCs.
"""

from __future__ import annotations

import numpy as np

# The monitoring element the model reads (DQM path), as DIALS and DISM name it.
RING2_ME = (
    "PixelPhase1/Phase1_MechanicalView/PXForward/"
    "clusters_per_SignedDiskCoord_per_SignedBladePanelCoord_PXRing_2"
)
MAP_SHAPE = (140, 56)
MODEL_SHAPE = (136, 48)
N_ROCS = MODEL_SHAPE[0] * MODEL_SHAPE[1]

ROCS_PER_DISK_COLUMN = 8  # ROC columns along a module: one disk slot is 8 bins wide
CROSS_COLUMNS = slice(24, 32)  # disk slot 0
CROSS_ROWS = slice(68, 72)  # blade slot 0

DISKS = (-3, -2, -1, 1, 2, 3)  # model-space order of the six disk column blocks
BLADES = tuple(b for b in range(-17, 18) if b != 0)

# |blade| ranges of the Ring 2 readout groups (ROG number -> first and last |blade|).
ROG_BLADES = {1: (1, 4), 2: (5, 8), 3: (9, 13), 4: (14, 17)}

Z_SIDES = ("m", "p")  # m = negative disks (-z), p = positive disks (+z)
BLADE_SIDES = ("O", "I")  # O = negative blades, I = positive blades

# Map-space rows of the non-cross bins, and columns, in model order.
MODEL_ROWS_IN_MAP = np.r_[0 : CROSS_ROWS.start, CROSS_ROWS.stop : MAP_SHAPE[0]]
MODEL_COLUMNS_IN_MAP = np.r_[0 : CROSS_COLUMNS.start, CROSS_COLUMNS.stop : MAP_SHAPE[1]]


def disk_columns(disk: int) -> slice:
    """Map columns of signed disk `disk` (-3..3; 0 is the cross)."""
    start = 8 * disk + 24
    return slice(start, start + 8)


def blade_rows(blade: int) -> slice:
    """Map rows of signed blade `blade` (-17..17; 0 is the cross)."""
    start = 4 * blade + 68
    return slice(start, start + 4)


def _group_index(z_side: int, blade_side: int, abs_disk: int, rog: int) -> int:
    """Position of a power group in the canonical order (z side, blade side, |disk|, ROG)."""
    return ((z_side * 2 + blade_side) * 3 + (abs_disk - 1)) * 4 + (rog - 1)


def _build_groups() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    names: list[str] = [""] * 48
    disk_of_group = np.zeros(48, dtype=np.int8)
    rog_of_group = np.zeros(48, dtype=np.int8)
    group_id_map = np.full(MAP_SHAPE, -1, dtype=np.int16)
    for z_side, z_name in enumerate(Z_SIDES):
        for blade_side, side_name in enumerate(BLADE_SIDES):
            for abs_disk in (1, 2, 3):
                disk = abs_disk if z_name == "p" else -abs_disk
                for rog, (first, last) in ROG_BLADES.items():
                    g = _group_index(z_side, blade_side, abs_disk, rog)
                    names[g] = f"FPix_B{z_name}{side_name}_D{abs_disk}_ROG{rog}"
                    disk_of_group[g] = disk
                    rog_of_group[g] = rog
                    sign = -1 if side_name == "O" else 1
                    blades = [sign * b for b in range(first, last + 1)]
                    rows = np.concatenate([np.arange(68 + 4 * b, 72 + 4 * b) for b in blades])
                    group_id_map[rows, disk_columns(disk)] = g
    return names, disk_of_group, rog_of_group, group_id_map


GROUP_NAMES, GROUP_DISK, GROUP_ROG, GROUP_ID_MAP = _build_groups()
GROUP_NAMES_ARRAY = np.array(GROUP_NAMES)
N_GROUPS = len(GROUP_NAMES)
GROUP_ID_MODEL = GROUP_ID_MAP[np.ix_(MODEL_ROWS_IN_MAP, MODEL_COLUMNS_IN_MAP)]
GROUP_ID_FLAT = GROUP_ID_MODEL.ravel()
GROUP_N_ROCS = np.bincount(GROUP_ID_FLAT, minlength=N_GROUPS)
# Flat model-space (6528) indices of each group's ROCs.
GROUP_ROCS_MODEL = tuple(np.flatnonzero(GROUP_ID_FLAT == g) for g in range(N_GROUPS))

# Every group is a block of model rows (one blade range) x 8 model columns (one disk), so sums
# per group are a reduceat over 8 row blocks, then over 6 column blocks of 8.
GROUP_ROW_STARTS_MODEL = np.flatnonzero(np.diff(GROUP_ID_MODEL[:, 0], prepend=-1))
GROUP_OF_BLOCK = GROUP_ID_MODEL[GROUP_ROW_STARTS_MODEL][:, ::ROCS_PER_DISK_COLUMN]  # (8, 6)
BLOCK_OF_GROUP = np.argsort(GROUP_OF_BLOCK.ravel())  # group id -> flat (row block, disk) index

# The same blocks in map space: blade-range row blocks (the cross rows belong to none) and
# disk slots of 8 columns (slot 3 is the cross).
_MAP_ROW_BLOCK_INDICATOR = np.zeros((len(GROUP_ROW_STARTS_MODEL), MAP_SHAPE[0]), dtype=np.float32)
for _b, _start in enumerate(GROUP_ROW_STARTS_MODEL):
    _rows = MODEL_ROWS_IN_MAP[_start : np.r_[GROUP_ROW_STARTS_MODEL, MODEL_SHAPE[0]][_b + 1]]
    _MAP_ROW_BLOCK_INDICATOR[_b, _rows] = 1.0
_MAP_DISK_SLOTS = np.array([3 + d for d in DISKS])  # disk slots 0..6 of the six disks
_ONES_PER_DISK_SLOT = np.ones(ROCS_PER_DISK_COLUMN, dtype=np.float32)


def group_totals_map(maps_flat: np.ndarray) -> np.ndarray:
    """(N, 7840) float32 map-space maps -> (N, 48) totals per power group (cross ignored).

    Two cheap products instead of one with 48 indicator columns (a third of the cost): the 8
    columns of each disk slot, then the blade-range row blocks.
    """
    n = len(maps_flat)
    per_disk_slot = (maps_flat.reshape(-1, ROCS_PER_DISK_COLUMN) @ _ONES_PER_DISK_SLOT).reshape(
        n, MAP_SHAPE[0], -1
    )
    blocks = np.matmul(_MAP_ROW_BLOCK_INDICATOR, per_disk_slot)  # (N, 8, 7)
    return blocks[:, :, _MAP_DISK_SLOTS].reshape(n, -1)[:, BLOCK_OF_GROUP]


# (48, 136, 48) boolean masks, for plotting and readable tests; inference uses GROUP_ID_FLAT.
GROUP_MASKS_MODEL = GROUP_ID_MODEL[None, :, :] == np.arange(N_GROUPS)[:, None, None]

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


def roc_name(row: int, column: int) -> str:
    """CMSSW name of the ROC in map bin (row, column), both 0-based numpy indices.

    Follows CMSSW's dead-ROC scripts, which work with ROOT's 1-based bins (i = column + 1,
    j = row + 1), hence the (i - 1), (j - 1) below kept as in the original formula.
    """
    if not (0 <= row < MAP_SHAPE[0] and 0 <= column < MAP_SHAPE[1]):
        raise ValueError(f"Bin ({row}, {column}) is outside the {MAP_SHAPE} Ring 2 map")
    i, j = column + 1, row + 1
    blade = -17 + (j - 1) // 4
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
    return f"FPix_{shell}_D{abs(disk)}_BLD{abs(blade)}_PNL{panel}_RNG2_ROC{roc}"


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
