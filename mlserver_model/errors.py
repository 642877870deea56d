"""The one exception family for bad input, which the handler answers with HTTP 400.

Everything the client can get wrong (tensor names, shapes, datatypes, counts, OMS columns) is an
`InputError`; anything else raised while serving is our fault and becomes a 500. The handler
catches this class only, never `ValueError` at large: a numpy shape bug inside the pipeline also
raises ValueError, and reporting it to DIALS as the client's mistake would hide it. It still
derives from ValueError so that offline callers (the CLI, notebooks) treat it as bad input.
"""

from __future__ import annotations


class InputError(ValueError):
    """The request or the data handed to the pipeline are not valid; the message says why."""
