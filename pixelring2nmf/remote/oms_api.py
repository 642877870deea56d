"""Download OMS per-lumisection information of runs into the OMS column-dict layout.

Not on the serving path (DIALS sends the OMS attributes with each request); this feeds training
and offline prediction with the same DCS flags DIALS would send. `requests` and the top-level
`omsid` module (the one credentials module: the environment, nothing else) are imported inside
the functions, so the package stays importable without them.

Protocol (public CERN SSO + OMS aggregation API, JSON:API):
1. POST form `grant_type=client_credentials, client_id, client_secret, audience=cmsoms-prod` to
   the SSO token endpoint -> JSON `access_token` (and `expires_in`, seconds).
2. GET `<OMS API>/lumisections?fields=...&filter[run_number][EQ]=<run>&page[limit]=..
   &page[offset]=..&sort=lumisection_number` with `Authorization: Bearer <token>` -> JSON
   `{"data": [{"attributes": {...one LS...}}, ...], "links": {"next": ...},
   "meta": {"totalResourceCount": ...}}`, paged by offset.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlserver_model.errors import checked_integer
from mlserver_model.omstools import OMS_COLUMNS

from ..errors import OptionError, RemoteError
from ..io.atomic import replacing
from ..io.oms import oms_from_lumisections
from .http import checked_url, json_object, send, short_body

logger = logging.getLogger(__name__)

PAGE_LIMIT = 5000  # the largest page OMS serves
TIMEOUT_S = (10.0, 60.0)  # (connect, read): a hung SSO or OMS must not hang the CLI
# A token this close to expiry is renewed before use, so a page request never races its expiry.
_TOKEN_RENEW_MARGIN_S = 30.0


class OMSAccessError(RemoteError):
    """The SSO or OMS could not be reached, refused us, or answered something unexpected."""


def _send(session: Any, method: str, url: str, timeout_s: tuple[float, float], **kwargs: Any):
    return send(session, method, url, timeout_s, error=OMSAccessError, **kwargs)


def _json_object(response: Any, what: str) -> dict:
    return json_object(response, what, error=OMSAccessError)


def _validated_runs(runs: Iterable[int]) -> list[int]:
    """Positive integer run numbers, duplicates dropped so no (run, LS) appears twice."""
    if isinstance(runs, str | bytes):
        raise OptionError(f"runs must be an iterable of run numbers, got the string {runs!r}.")
    run_numbers: list[int] = []
    for run in runs:
        checked_integer(run, "Run numbers", minimum=1)
        if int(run) not in run_numbers:
            run_numbers.append(int(run))
    if not run_numbers:
        raise OptionError("No run number given.")
    return run_numbers


@dataclass
class _TokenSource:
    """An SSO access token, renewed when it is about to expire (long multi-run downloads)."""

    session: Any
    token_url: str
    credentials: Any
    timeout_s: tuple[float, float]
    _token: str | None = None
    _renew_at_s: float = float("inf")

    def bearer(self) -> str:
        if self._token is None or time.monotonic() >= self._renew_at_s:
            self._token, lifetime_s = self._request_token()
            self._renew_at_s = (
                float("inf")
                if lifetime_s is None
                else time.monotonic() + lifetime_s - _TOKEN_RENEW_MARGIN_S
            )
        return self._token

    def _request_token(self) -> tuple[str, float | None]:
        import omsid

        response = _send(
            self.session,
            "POST",
            self.token_url,
            self.timeout_s,
            data={
                "grant_type": "client_credentials",
                "client_id": self.credentials.client_id,
                "client_secret": self.credentials.client_secret,
                "audience": omsid.AUDIENCE,
            },
        )
        # The SSO (Keycloak) answers 400 or 401 to an unknown client or a wrong secret.
        if response.status_code in (400, 401, 403):
            raise OMSAccessError(
                f"The CERN SSO refused the client credentials of {self.credentials.client_id!r} "
                f"(HTTP {response.status_code} from {self.token_url}): check "
                f"{omsid.CLIENT_ID_VAR} and {omsid.CLIENT_SECRET_VAR}. "
                f"Answer: {short_body(response)!r}"
            )
        if response.status_code >= 300:
            raise OMSAccessError(
                f"The CERN SSO answered HTTP {response.status_code} from {self.token_url}: "
                f"{short_body(response)!r}"
            )
        payload = _json_object(response, "The CERN SSO")
        token = payload.get("access_token")
        if not isinstance(token, str) or not token:
            raise OMSAccessError(
                f"The CERN SSO answer has no access_token (keys: {sorted(payload)})."
            )
        lifetime_s = payload.get("expires_in")
        return token, float(lifetime_s) if isinstance(lifetime_s, int | float) else None


def page_rows(payload: Any, run: int) -> list[dict]:
    """The LS attributes of one page, checked to be the run we asked for with every attribute."""
    if not isinstance(payload, Mapping):
        raise OMSAccessError(f"OMS answer for run {run} is a JSON {type(payload).__name__}.")
    data = payload.get("data")
    if not isinstance(data, list):
        raise OMSAccessError(
            f"OMS answer for run {run} has no 'data' list (keys: {sorted(payload)})."
        )
    rows = []
    for item in data:
        attributes = item.get("attributes") if isinstance(item, Mapping) else None
        if not isinstance(attributes, Mapping):
            raise OMSAccessError(f"OMS lumisection of run {run} has no 'attributes' object.")
        missing = [name for name in OMS_COLUMNS if name not in attributes]
        if missing:
            raise OMSAccessError(
                f"OMS lumisection of run {run} lacks attribute(s) {missing}; "
                f"the OMS API may have renamed them."
            )
        if attributes["run_number"] != run:
            raise OMSAccessError(
                f"OMS returned a lumisection of run {attributes['run_number']!r} when asked "
                f"for run {run}: the run filter was not applied."
            )
        rows.append({name: attributes[name] for name in OMS_COLUMNS})
    return rows


def is_last_page(payload: Mapping, n_rows: int, n_fetched: int, page_limit: int) -> bool:
    """OMS says so (links.next null, totalResourceCount reached) or the page was not full."""
    if n_rows < page_limit:
        return True
    meta = payload.get("meta")
    total = meta.get("totalResourceCount") if isinstance(meta, Mapping) else None
    if isinstance(total, int) and n_fetched >= total:
        return True
    links = payload.get("links")
    # only an explicit null `next` ends paging: an absent key says nothing
    return isinstance(links, Mapping) and "next" in links and not links["next"]


def run_lumisections(
    fetch_page: Callable[[int], Any], run: int, page_limit: int = PAGE_LIMIT
) -> list[dict]:
    """All LS of one run, in lumisection order, from `fetch_page(offset)` (one JSON:API page).

    The one paging loop of the OMS API and of DIALS's OMS proxy, so both stop on the same
    signals and both refuse a page that repeats an LS.
    """
    rows: list[dict] = []
    seen_ls: set = set()
    while True:
        payload = fetch_page(len(rows))
        page = page_rows(payload, run)
        page_ls = {row["lumisection_number"] for row in page}
        if len(page_ls) != len(page) or not seen_ls.isdisjoint(page_ls):
            # overlapping pages (OMS updating the run, or page[offset] ignored) would otherwise
            # duplicate LS or, for a server that always sends the first page, never end
            raise OMSAccessError(
                f"OMS returned some lumisections of run {run} twice while paging "
                f"(offset {len(rows)}); retry later."
            )
        seen_ls |= page_ls
        rows.extend(page)
        if is_last_page(payload, len(page), len(rows), page_limit):
            break
    rows.sort(key=lambda row: row["lumisection_number"])
    logger.debug("OMS: run %d has %d lumisections", run, len(rows))
    return rows


def _fetch_run(
    session: Any,
    lumisections_url: str,
    run: int,
    token: _TokenSource,
    page_limit: int,
    timeout_s: tuple[float, float],
) -> list[dict]:
    """All LS of one run from the OMS API, in lumisection order."""

    def fetch_page(offset: int) -> dict:
        params = {
            "fields": ",".join(OMS_COLUMNS),
            "filter[run_number][EQ]": run,
            "page[limit]": page_limit,
            "page[offset]": offset,
            "sort": "lumisection_number",
        }
        response = _send(
            session,
            "GET",
            lumisections_url,
            timeout_s,
            params=params,
            headers={"Authorization": f"Bearer {token.bearer()}", "Accept": "application/json"},
        )
        if response.status_code in (401, 403):
            raise OMSAccessError(
                f"OMS refused the access token (HTTP {response.status_code} from "
                f"{lumisections_url}): the CERN application may not be authorised for OMS "
                f"API access. Answer: {short_body(response)!r}"
            )
        if response.status_code >= 300:
            raise OMSAccessError(
                f"OMS answered HTTP {response.status_code} for run {run} from "
                f"{lumisections_url}: {short_body(response)!r}"
            )
        return _json_object(response, "OMS")

    return run_lumisections(fetch_page, run, page_limit)


def fetch_lumisections(
    runs: Iterable[int],
    *,
    api_url: str | None = None,
    token_url: str | None = None,
    credentials: Any = None,
    session: Any = None,
    page_limit: int = PAGE_LIMIT,
    timeout_s: tuple[float, float] = TIMEOUT_S,
) -> dict[str, list]:
    """OMS lumisections of `runs` as the OMS column dict (17 keys, runs in the given order).

    URLs and credentials default to the environment (see `omsid`); `credentials` is anything
    with `client_id` and `client_secret` (e.g. `omsid.OMSCredentials`). A run unknown to OMS
    contributes no LS and a warning. `session` (a `requests.Session`) is left open.
    """
    import omsid

    run_numbers = _validated_runs(runs)
    checked_integer(page_limit, "page_limit", minimum=1)
    lumisections_url = checked_url(api_url or omsid.api_url(), "OMS API URL").rstrip("/")
    lumisections_url += "/lumisections"
    token_endpoint = checked_url(token_url or omsid.token_url(), "SSO token URL")
    if credentials is None:
        try:
            credentials = omsid.credentials()
        except omsid.MissingCredentialsError as error:
            raise OMSAccessError(str(error)) from None
    if session is not None and session.verify is False:
        raise OptionError("The session has TLS verification turned off (verify=False); refusing.")

    own_session = session is None
    if own_session:
        import requests

        session = requests.Session()
    try:
        token = _TokenSource(session, token_endpoint, credentials, timeout_s)
        rows: list[dict] = []
        for run in run_numbers:
            run_rows = _fetch_run(session, lumisections_url, run, token, page_limit, timeout_s)
            if not run_rows:
                logger.warning("OMS has no lumisection for run %d", run)
            rows.extend(run_rows)
    finally:
        if own_session:
            session.close()
    if not rows:  # still the full layout, so callers can count LS without special cases
        return {name: [] for name in OMS_COLUMNS}
    return oms_from_lumisections(rows)


def write_oms_json(columns: Mapping[str, list], out: str | Path, *, runs, source: str) -> int:
    """Write the OMS column dict of `runs` (as `source` answered) to `out`; the LS count.

    An empty answer is an error rather than an empty file, which `era` would read as every LS
    missing from OMS (all DCS-bad).
    """
    n_ls = len(columns["lumisection_number"])
    if n_ls == 0:
        raise RemoteError(
            f"{source} has no lumisection for run(s) {list(runs)}; nothing written to {out}."
        )
    out_path = Path(out)
    # an interrupted download never leaves a truncated JSON behind
    with replacing(out_path) as partial, partial.open("w", encoding="utf-8") as stream:
        json.dump(columns, stream, allow_nan=False)
    n_runs = len(set(columns["run_number"]))
    logger.info(
        "Wrote OMS information of %d lumisections from %d run(s) (%s) to %s",
        n_ls,
        n_runs,
        source,
        out_path,
    )
    return n_ls
