"""The toolkit's one family of user errors: what the command line turns into one line and exit 2.

Everything a user can get wrong or fix (an option, a missing or unreadable file, data that are
not what they claim, a service that cannot be reached or refuses us, an output that cannot be
written) is a `UserError`. Anything else raised inside the toolkit is a bug: the command line
lets it through with its traceback (exit 1), so a numpy shape mistake is never reported as the
user's bad input. The runtime's own `InputError` (bad data handed to the model) and
`ArtifactError` (a bad model file) are user errors too; the command line treats them alike.

Option and data errors are also ValueErrors, and remote errors RuntimeErrors, so that code
calling the toolkit as a library (notebooks, the tests) may catch them the usual way; the
command line catches only this family, never ValueError at large.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message names the file, option or service and the problem."""


class OptionError(UserError, ValueError):
    """An option value, or a combination of options, that cannot work."""


class DataError(UserError, ValueError):
    """An input file that is missing, unreadable, or does not hold what it should."""


class RemoteError(UserError, RuntimeError):
    """A service (the CERN SSO, OMS, DIALS, a Dask scheduler) that cannot be reached or refuses."""


class OutputError(UserError):
    """An output that cannot be written: it exists (no --force), read-only folder, full disk."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every exception the command line reports as one line: this family and the runtime's."""
    from mlserver_model.artifact import ArtifactError
    from mlserver_model.errors import InputError

    return (UserError, InputError, ArtifactError)
