"""Events of truth.csv: one injected anomaly is one event however the CSV was read."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from pixelring2nmf.validation.evaluation import score_era
from pixelring2nmf.validation.truthcheck import truth_event_ids, truth_ranges

# Missing LS have empty groups: pandas reads them as NaN unless keep_default_na=False.
TRUTH_CSV = """run,ls,anomaly_type,groups,n_dead_rocs
1,7,Missing,,0
1,5,Missing,,0
1,6,Missing,,0
1,8,Multi-Disk,FPix_BpI_D1_ROG3;FPix_BpI_D2_ROG3,80
1,9,Multi-Disk,FPix_BpI_D1_ROG3;FPix_BpI_D2_ROG3,80
1,12,Missing,,0
2,1,Missing,,0
"""


@pytest.mark.parametrize("keep_default_na", [True, False], ids=["groups NaN", "groups empty"])
def test_consecutive_missing_ls_make_one_event(keep_default_na: bool) -> None:
    truth = pd.read_csv(io.StringIO(TRUTH_CSV), keep_default_na=keep_default_na)
    ids = truth_event_ids(truth)
    # rows are not in (run, ls) order: the ids follow the frame's own rows
    assert ids[0] == ids[1] == ids[2]
    assert ids[3] == ids[4]
    assert len(np.unique(ids)) == 4
    ranges = truth_ranges(truth)
    assert ranges[["run", "first_ls", "last_ls", "kind"]].values.tolist() == [
        [1, 5, 7, "Missing"],
        [1, 8, 9, "Multi-Disk"],
        [1, 12, 12, "Missing"],
        [2, 1, 1, "Missing"],
    ]
    flags = pd.DataFrame({"run": [1, 1, 1], "ls": [8, 9, 10], "flag": [True, False, False]})
    score = score_era(truth, {"ours": flags}, np.full(48, 100)).set_index("category")
    assert score.loc["Missing", "events_injected"] == 3
    assert score.loc["Missing", "ls_injected"] == 5
    assert score.loc["Multi-Disk, 2 disks", "events_found"] == 1
