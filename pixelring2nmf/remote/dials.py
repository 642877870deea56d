"""DIALS through `cmsdials`: a ring's ME (Ring 2 by default, or Ring 1), OMS lumisections, and
what a registered model flagged.

Experts downloaded the data by hand in notebooks; this makes it one command that survives a
failure. `fetch-dials` asks DIALS's `h2d` endpoint one cursor page at a time
(`list_all(max_pages=1, resume_from=...)`, the package's own resume), writes each page to disk as
it arrives (a page is a row group: memory stays bounded) and records the cursor of the next page
after each one. A page that fails is retried a few times; if it still fails, the command stops
with the cursor saved, and running the same command again continues from that page: no page is
fetched twice. The finished file has the layout users have (`list<list<double>>`, as
`.to_pandas().to_parquet()` writes it).

Credentials are read from the environment or from the cmsdials device-flow cache, never from
the project: `DIALS_CLIENT_ID` + `DIALS_CLIENT_SECRET` (an application with DIALS API access,
client-credentials token from the CERN SSO), or `DIALS_CLIENT_SECRET` alone (the older
X-CLIENT-SECRET header), or the cached interactive login (`DIALS_CREDS_CACHE`, default
~/.cache/pixelring2nmf/dials, outside any repository). TLS verification is never turned off;
plain http is accepted only for a DIALS on this machine (tests).

`cmsdials` and `requests` are imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlserver_model.geometry import RING2_ME

from ..errors import OptionError, RemoteError, UserError
from ..io.atomic import replacing, write_text
from ..io.parquet import dials_schema
from .http import checked_url
from .oms_api import PAGE_LIMIT, OMSAccessError, run_lumisections

logger = logging.getLogger(__name__)

DEFAULT_WORKSPACE = "tracker"
DEFAULT_ATTEMPTS = 4
DEFAULT_RETRY_WAIT_S = 5.0  # doubled after each failed attempt

CLIENT_ID_VAR = "DIALS_CLIENT_ID"
CLIENT_SECRET_VAR = "DIALS_CLIENT_SECRET"
CREDS_CACHE_VAR = "DIALS_CREDS_CACHE"
KEYCLOAK_URL_VAR = "DIALS_KEYCLOAK_URL"  # another SSO (a test or dev instance)
BASE_URL_VAR = "DIALS_BASE_URL"
DEFAULT_CREDS_CACHE = Path("~/.cache/pixelring2nmf/dials")
_STATE_NAME = "state.json"


class DialsAccessError(RemoteError):
    """DIALS could not be reached, refused us, or a page kept failing (the cursor is saved)."""


# ---- connection --------------------------------------------------------------------------------


def _require_cmsdials() -> None:
    """A clear message, not an ImportError, when the optional dependency is missing."""
    from importlib.util import find_spec

    if find_spec("cmsdials") is None:
        raise UserError(
            "DIALS access needs the cmsdials package: pip install 'pixelring2nmf[dials]' (in an "
            "environment with MLServer 1.7, whose tritonclient needs urllib3 2 while cmsdials "
            'pins urllib3<2: pip install --no-deps "cmsdials>=2.4")'
        )


def credentials():
    """cmsdials credentials from the environment, else from the device-flow cache.

    The interactive device flow (a URL to open in a browser) starts only on a terminal; a batch
    job without credentials gets a clear error instead of waiting for a login nobody sees.
    """
    _require_cmsdials()
    client_id, secret = os.environ.get(CLIENT_ID_VAR), os.environ.get(CLIENT_SECRET_VAR)
    keycloak = os.environ.get(KEYCLOAK_URL_VAR)
    auth_client = None
    if keycloak:
        from cmsdials.auth.client import AuthClient

        auth_client = AuthClient(keycloak_url=checked_url(keycloak, KEYCLOAK_URL_VAR))
    if secret and client_id:
        from cmsdials.auth.client_credentials import Credentials

        return _with_requests_errors(
            "the CERN SSO", lambda: Credentials(client_id, secret, client=auth_client)
        )
    if secret:
        from cmsdials.auth.secret_key import Credentials

        with warnings.catch_warnings():  # the header is deprecated, not yet refused
            warnings.simplefilter("ignore", DeprecationWarning)
            return Credentials(secret)
    cache = Path(os.environ.get(CREDS_CACHE_VAR) or DEFAULT_CREDS_CACHE).expanduser()
    interactive = sys.stdin is not None and sys.stdin.isatty()
    if not (cache / "creds").is_file() and not interactive:
        raise DialsAccessError(
            f"No DIALS credentials: set {CLIENT_ID_VAR} and {CLIENT_SECRET_VAR} (an application "
            f"with DIALS API access), or log in once from a terminal (the device flow caches "
            f"the token in {cache}; {CREDS_CACHE_VAR} moves it)."
        )
    from cmsdials.auth.device import Credentials

    return _with_requests_errors(
        "the CERN SSO",
        lambda: Credentials.from_creds_file(cache_dir=str(cache), client=auth_client),
    )


def _with_requests_errors(what: str, call):
    import requests

    try:
        return call()
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise DialsAccessError(
            f"{what} refused the DIALS credentials (HTTP {status}): check {CLIENT_ID_VAR} and "
            f"{CLIENT_SECRET_VAR}"
        ) from error
    except requests.RequestException as error:
        raise DialsAccessError(f"could not reach {what}: {error}") from error


def connect(base_url: str | None = None, workspace: str = DEFAULT_WORKSPACE):
    """A `cmsdials.Dials` for the production DIALS, or `base_url` (another or a local one)."""
    _require_cmsdials()
    from cmsdials import Dials

    base_url = base_url or os.environ.get(BASE_URL_VAR)
    kwargs = {"base_url": checked_url(base_url, "DIALS URL")} if base_url else {}
    return Dials(credentials(), workspace=workspace, **kwargs)


def _refusal(error: Exception, url: str) -> DialsAccessError | None:
    """A clear error for answers that retrying cannot fix (401/403/404/400), else None."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status in (401, 403):
        return DialsAccessError(
            f"DIALS refused the request (HTTP {status} from {url}): the credentials are missing, "
            f"expired or lack access to this workspace. Set {CLIENT_ID_VAR}/{CLIENT_SECRET_VAR} "
            f"or log in again (delete the cached token in {CREDS_CACHE_VAR} or "
            f"{DEFAULT_CREDS_CACHE}); what was downloaded is kept, rerun to continue."
        )
    if status is not None and 400 <= status < 500 and status != 429:
        body = " ".join(getattr(response, "text", "").split())[:300]
        return DialsAccessError(f"DIALS answered HTTP {status} from {url}: {body!r}")
    return None


# ---- fetch-dials: h2d pages to parquet, resumable -----------------------------------------------


@dataclass
class DownloadState:
    """Where a download stands: which query, the cursor of its next page, pages written."""

    request: dict
    query_index: int = 0
    next_url: str | None = None
    pages: int = 0
    n_ls: int = 0

    def save(self, folder: Path) -> None:
        write_text(folder / _STATE_NAME, json.dumps(self.__dict__, indent=1))

    @classmethod
    def load_or_start(cls, folder: Path, request: dict) -> DownloadState:
        path = folder / _STATE_NAME
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            return cls(request=request)
        state = cls(**json.loads(path.read_text()))
        if state.request != request:
            raise OptionError(
                f"{folder} holds an unfinished download of another request ({state.request}); "
                "rerun that command to finish it, or delete the folder"
            )
        return state


def h2d_queries(
    dataset_regex: str,
    runs: Sequence[int] | None,
    run_range: tuple[int, int] | None,
    page_size: int,
    me: str = RING2_ME,
) -> list[dict]:
    """One filter set per query: DIALS filters h2d by one run or by a run range; `me` is the
    ring's ME (`RING1.me` for Ring 1): one file per ring, as the readers expect."""
    base = {"me": me, "dataset__regex": dataset_regex, "page_size": page_size}
    if runs:
        return [{**base, "run_number": int(run)} for run in dict.fromkeys(runs)]
    if run_range is None:
        raise OptionError("give --runs or --run-range")
    first, last = run_range
    if first > last:
        raise OptionError(f"--run-range {first} {last}: the first run is after the last")
    return [{**base, "run_number__gte": int(first), "run_number__lte": int(last)}]


def _page_table(results: list) -> Any:
    """One page of `LumisectionHistogram2D` models -> an Arrow table in the DIALS layout."""
    import pyarrow as pa

    schema = dials_schema("double")
    rows = [r.model_dump() for r in results]
    return pa.Table.from_pylist(rows, schema=schema)


def fetch_h2d(
    dials,
    queries: list[dict],
    out: Path,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    retry_wait_s: float = DEFAULT_RETRY_WAIT_S,
    progress: bool = True,
) -> DownloadState:
    """Download every page of every query into `out`, resuming a previous partial download."""
    import pyarrow.parquet as pq
    from cmsdials.filters import LumisectionHistogram2DFilters
    from tqdm import tqdm

    folder = out.with_name(out.name + ".partial")
    state = DownloadState.load_or_start(folder, {"queries": queries, "out": str(out)})
    if state.pages:
        logger.info(
            "fetch-dials: resuming %s after %d page(s) (%d LS)", out, state.pages, state.n_ls
        )
    pagination = dials.h2d.pagination_model
    url = dials.h2d.api_url + dials.h2d.lookup_url
    with tqdm(desc="fetch-dials", unit="LS", initial=state.n_ls, disable=not progress) as bar:
        while state.query_index < len(queries):
            filters = LumisectionHistogram2DFilters(**queries[state.query_index])
            resume = (
                None
                if state.next_url is None
                else pagination(next=state.next_url, previous=None, results=[])
            )
            page = _one_page(dials, filters, resume, url, attempts, retry_wait_s, state, folder)
            if page.results:  # the page first, then the cursor past it: a crash between the
                # two refetches this page and overwrites the same part, never duplicates it
                part = folder / f"page-{state.pages:06d}.parquet"
                with replacing(part) as partial:
                    pq.write_table(_page_table(page.results), partial)
            state.pages += 1
            state.n_ls += len(page.results)
            state.next_url = None if page.next is None else str(page.next)
            if state.next_url is None:
                state.query_index += 1
            state.save(folder)
            bar.update(len(page.results))
            bar.set_postfix(pages=state.pages)
    _assemble(folder, out)
    return state


def _one_page(dials, filters, resume, url, attempts, retry_wait_s, state, folder):
    """One page through cmsdials' list_all, retried.

    A refusal or exhaustion needs no save: fetch_h2d saved the cursor after the previous page,
    and before the first one there is nothing to resume.
    """
    import requests

    for attempt in range(1, attempts + 1):
        try:
            return dials.h2d.list_all(filters, max_pages=1, resume_from=resume, retries=0)
        except (requests.RequestException, OSError) as error:
            refusal = _refusal(error, url)
            if refusal is not None:
                raise refusal from error
            if attempt == attempts:
                raise DialsAccessError(
                    f"a page from {url} failed {attempts} times ({error}); the {state.n_ls} LS "
                    f"downloaded so far are kept in {folder}: rerun the same command to continue "
                    "from the failed page"
                ) from error
            wait = retry_wait_s * 2 ** (attempt - 1)
            logger.warning(
                "fetch-dials: page failed (%s), attempt %d of %d, next in %.0f s",
                error,
                attempt,
                attempts,
                wait,
            )
            time.sleep(wait)  # back-off for a struggling server
    raise AssertionError("unreachable")


def _assemble(folder: Path, out: Path) -> None:
    """The pages, in order, into one parquet (a row group each); then the partial folder goes."""
    import pyarrow.parquet as pq

    parts = sorted(folder.glob("page-*.parquet"))
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        replacing(out) as partial,
        pq.ParquetWriter(partial, dials_schema("double"), compression="zstd") as writer,
    ):
        for part in parts:
            writer.write_table(pq.read_table(part))
    shutil.rmtree(folder)


# ---- fetch-oms --via dials ------------------------------------------------------------------


def oms_lumisections(dials, runs: Iterable[int], page_limit: int = PAGE_LIMIT) -> list[dict]:
    """OMS `lumisections` of the runs through DIALS's OMS proxy (no OMS application needed).

    The proxy forwards OMS's JSON:API pages, so they are paged and checked by the same loop
    as the OMS API's (`oms_api.run_lumisections`).
    """
    import requests
    from cmsdials.clients.oms_proxy.models import OMSFilter, OMSPage

    url = dials.oms.api_url + dials.oms.lookup_url
    rows: list[dict] = []
    for run in dict.fromkeys(int(r) for r in runs):

        def fetch_page(offset: int, run: int = run) -> Any:
            try:
                return dials.oms.query(
                    "lumisections",
                    [OMSFilter(attribute_name="run_number", value=run, operator="EQ")],
                    [
                        OMSPage(attribute_name="limit", value=page_limit),
                        OMSPage(attribute_name="offset", value=offset),
                    ],
                    retries=0,
                )
            except requests.RequestException as error:
                raise _refusal(error, url) or DialsAccessError(
                    f"DIALS OMS proxy failed for run {run}: {error}"
                ) from error

        try:
            run_rows = run_lumisections(fetch_page, run, page_limit)
        except OMSAccessError as error:
            raise DialsAccessError(f"DIALS OMS proxy ({url}): {error}") from error
        if not run_rows:
            logger.warning("DIALS OMS proxy has no lumisection for run %d", run)
        rows.extend(run_rows)
    return sorted(rows, key=lambda r: (r["run_number"], r["lumisection_number"]))


# ---- dials-flags: DIALS's flags against a local prediction ----------------------------------


def dials_flags(dials, model_id: int, runs: Sequence[int], dataset_ids: Sequence[int]):
    """(run, ls, dataset_id, metric_value) of every LS the registered model flagged in DIALS."""
    import requests
    from cmsdials.filters import MLBadLumisectionFilters

    filters = MLBadLumisectionFilters(
        model_id__in=[int(model_id)],
        run_number__in=[int(r) for r in runs],
        dataset_id__in=[int(d) for d in dataset_ids] or None,
        page_size=1000,
    )
    url = dials.ml_bad_lumis.api_url + dials.ml_bad_lumis.lookup_url
    try:
        page = dials.ml_bad_lumis.list_all(filters, retries=0)
    except requests.RequestException as error:
        raise _refusal(error, url) or DialsAccessError(f"DIALS failed: {error}") from error
    columns = ["run", "ls", "dataset_id", "dials_metric"]
    rows = [(r.run_number, r.ls_number, r.dataset_id, r.metric_value) for r in page.results]
    return pd.DataFrame(rows, columns=columns).drop_duplicates(["run", "ls"])


def compare_flags(dials_flagged: pd.DataFrame, local: pd.DataFrame) -> pd.DataFrame:
    """LS flagged by either side: `agree`, `only DIALS` or `only local`, with both Metrics.

    `local` are per-LS results (`io.results`) of the same data; an LS DIALS flagged
    that is not in the local data is `only DIALS` with an empty local Metric.
    """
    mine = local[["run", "ls", "flag", "metric", "type", "groups"]].rename(
        columns={"flag": "local_flag", "metric": "local_metric"}
    )
    merged = mine.merge(dials_flagged, on=["run", "ls"], how="outer", indicator=True)
    merged["dials_flag"] = merged._merge != "left_only"
    merged["local_flag"] = merged.local_flag.fillna(False).astype(bool)
    either = merged[merged.dials_flag | merged.local_flag].copy()
    either["status"] = np.select(
        [either.dials_flag & either.local_flag, either.dials_flag],
        ["agree", "only DIALS"],
        "only local",
    )
    columns = ["run", "ls", "status", "dials_metric", "local_metric", "type", "groups"]
    return either.sort_values(["run", "ls"])[columns].reset_index(drop=True)
