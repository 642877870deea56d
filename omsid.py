"""Where OMS clients find their CERN application credentials: the environment, and only there.

The original deployment kept the client id and secret inside an `omsid.py` beside its
template and `test_predictions.py`. This module keeps that name and place (so `import omsid`
still answers "who am I for OMS?" for `test_predictions.py --oms-live` and for the toolkit's
OMS client, `pixelring2nmf fetch-oms`) but holds no value at all: a secret in a file ends up in
git history, in the DISM zip and in every clone. It is standalone (standard library only) and
installed as a top-level module with the toolkit; it is never copied into the model folder.

Environment variables:

- `OMS_CLIENT_ID`      (required) client id of a CERN application registered for OMS API
                       access (Application Portal, audience `cmsoms-prod`).
- `OMS_CLIENT_SECRET`  (required) the matching client secret.
- `OMS_API_URL`        (optional) OMS aggregation API root,
                       default `https://cmsoms.cern.ch/agg/api/v1`.
- `OMS_TOKEN_URL`      (optional) CERN SSO client-credentials token endpoint,
                       default `https://auth.cern.ch/auth/realms/cern/api-access/token`.

Set them in the shell, never in a committed file, e.g.
`export OMS_CLIENT_ID=my-app; read -rs OMS_CLIENT_SECRET; export OMS_CLIENT_SECRET`.
TLS verification is always on; a private CA bundle is given the standard `requests` way,
`export REQUESTS_CA_BUNDLE=/path/to/ca.pem`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

CLIENT_ID_VAR = "OMS_CLIENT_ID"
CLIENT_SECRET_VAR = "OMS_CLIENT_SECRET"
API_URL_VAR = "OMS_API_URL"
TOKEN_URL_VAR = "OMS_TOKEN_URL"

DEFAULT_API_URL = "https://cmsoms.cern.ch/agg/api/v1"
DEFAULT_TOKEN_URL = "https://auth.cern.ch/auth/realms/cern/api-access/token"
# The SSO issues a token valid only for the service named here (production OMS).
AUDIENCE = "cmsoms-prod"


class MissingCredentialsError(RuntimeError):
    """A required OMS credential variable is unset or empty."""


@dataclass(frozen=True)
class OMSCredentials:
    """A CERN application's client id and secret; the secret never appears in repr or logs."""

    client_id: str
    client_secret: str = field(repr=False)


def _required(names: tuple[str, ...]) -> dict[str, str]:
    """Read every variable of `names`, reporting all missing ones at once (one fix, not two)."""
    values = {name: os.environ.get(name, "").strip() for name in names}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise MissingCredentialsError(
            f"OMS credentials missing: environment variable(s) {', '.join(missing)} "
            f"unset or empty. Export the client id and secret of a CERN application with "
            f"OMS access ({AUDIENCE}), e.g. `export {CLIENT_ID_VAR}=<id>` and "
            f"`read -rs {CLIENT_SECRET_VAR}; export {CLIENT_SECRET_VAR}`; "
            f"never write them into a file of the repository."
        )
    return values


def credentials() -> OMSCredentials:
    """Client id and secret from `OMS_CLIENT_ID` and `OMS_CLIENT_SECRET`."""
    values = _required((CLIENT_ID_VAR, CLIENT_SECRET_VAR))
    return OMSCredentials(values[CLIENT_ID_VAR], values[CLIENT_SECRET_VAR])


def client_id() -> str:
    """The client id from `OMS_CLIENT_ID`."""
    return _required((CLIENT_ID_VAR,))[CLIENT_ID_VAR]


def client_secret() -> str:
    """The client secret from `OMS_CLIENT_SECRET`."""
    return _required((CLIENT_SECRET_VAR,))[CLIENT_SECRET_VAR]


def api_url() -> str:
    """OMS API root from `OMS_API_URL`, production OMS when unset."""
    return os.environ.get(API_URL_VAR, "").strip() or DEFAULT_API_URL


def token_url() -> str:
    """SSO token endpoint from `OMS_TOKEN_URL`, the CERN SSO when unset."""
    return os.environ.get(TOKEN_URL_VAR, "").strip() or DEFAULT_TOKEN_URL
