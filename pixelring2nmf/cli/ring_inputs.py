"""The ring(s) of an era's model and files: what the executor judges with, and what era.json says.

An era of a Ring 2 model writes exactly what it always wrote (no ring key in era.json, the
tables' `Ring_Num` 2). A Ring 1 model's era says `"ring": "Ring 1"`; a joint model's says
`"ring": "Ring 1+2"`, pairs the rings' LS (era/joint.py) and counts the LS of one ring only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from mlserver_model.geometry import RING2, RINGS

logger = logging.getLogger("pixelring2nmf.cli")


def ring_inputs(models, sources: Sequence, status) -> tuple[object, Callable]:
    """What the executor judges with (the model, or for joint models a `JointEra` that knows
    both rings' files), and the check every file's plan passes before any LS is judged."""
    from ..era.joint import JointEra
    from ..model.rings import check_file_ring, describe_model, rings_text

    rings = models.rings
    if rings != (RING2.ring,):
        status.rings = {"ring": rings_text(rings)}
    paths = ", ".join(m.path for m in models.models)
    model_text = describe_model(models.models[0].model, paths)
    model = models.model_for_executor
    if len(rings) > 1:
        model = JointEra(model, sources)

    def check_plan(plan) -> None:
        check_file_ring(RINGS[plan.ring], rings, plan.source, model_text)

    return model, check_plan


def table_ring(status):
    """The TableRing of the era's model (the tables' `Ring_Num`, `Row/Quarter`)."""
    from ..model.rings import JOINT_RING_NAME, RING2_TABLES, TableRing

    name = status.rings.get("ring")
    if name is None:
        return RING2_TABLES
    return TableRing.of_rings((1, 2) if name == JOINT_RING_NAME else (int(name[-1]),))


def record_joint_counts(status, era) -> None:
    """A joint era's era.json: LS judged on both rings, and on one ring only (said too)."""
    from ..era.joint import one_ring_counts
    from ..model.rings import JOINT_RING_NAME

    if status.rings.get("ring") != JOINT_RING_NAME:
        return
    counts = one_ring_counts(era.results)
    status.details.update(counts)
    alone = counts["ls_one_ring_only"]
    if any(alone.values()):
        logger.warning(
            "era: %d LS judged on both rings; %s (the other ring's files do not hold them)",
            counts["ls_both_rings"],
            ", ".join(f"{n} LS judged on {ring} alone" for ring, n in alone.items() if n),
        )
