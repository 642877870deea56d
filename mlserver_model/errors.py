"""The one exception family for bad input, which the handler answers with HTTP 400.

Everything the client can get wrong (tensor names, shapes, datatypes, counts, OMS columns) is an
`InputError`; anything else raised while serving is our fault and becomes a 500. The handler
catches this class only, never `ValueError` at large: a numpy shape bug inside the pipeline also
raises ValueError, and reporting it to DIALS as the client's mistake would hide it. It still
derives from ValueError so that offline callers (the CLI, notebooks) treat it as bad input.
"""

from __future__ import annotations

import numbers


class InputError(ValueError):
    """The request or the data handed to the pipeline are not valid; the message says why."""


def checked_integer(value: object, what: str, minimum: int = 0) -> int:
    """`value` as an int >= `minimum`, or a ValueError naming `what`.

    One definition for every count, size, port and run number: a bool is not a count (True
    would pass as 1), and numpy integers are as good as Python ones.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        wanted = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        raise ValueError(f"{what} must be {wanted}, got {value!r}")
    return int(value)
