"""OMS access against a fake CERN SSO + OMS API on 127.0.0.1 (the real ones need CERN credentials).

The fake speaks the real formats: a Keycloak client-credentials token endpoint (form POST ->
`access_token`, `expires_in`) and the OMS JSON:API `lumisections` resource (`data[].attributes`,
`links.next`, `meta.totalResourceCount`, offset paging). It checks what a real server would
check (credentials, bearer token, run filter, fields, sort) and answers 400 to anything else,
so a client that sends the wrong request fails here too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

import omsid
from pixelring2nmf import cli
from pixelring2nmf.io import oms as omstools
from pixelring2nmf.remote.oms_api import OMSAccessError, fetch_lumisections

# docs/domain.md section 3, written out again so a typo in the module cannot hide behind itself.
EXPECTED_KEYS = [
    "delivered_lumi_per_lumisection",
    "recorded_lumi_per_lumisection",
    "pileup",
    "physics_flag",
    "prescale_index",
    "prescale_name",
    "beams_stable",
    "cms_active",
    "bpix_ready",
    "fpix_ready",
    "tibtid_ready",
    "tob_ready",
    "tecp_ready",
    "tecm_ready",
    "fill_number",
    "run_number",
    "lumisection_number",
]
CLIENT_ID = "pixelring2nmf-test"
CLIENT_SECRET = "fake-secret-for-loopback-tests"
TOKEN_PATH = "/auth/realms/cern/api-access/token"
API_PATH = "/agg/api/v1"


def make_lumisections(run: int, n_ls: int, fill: int) -> list[dict]:
    """OMS attributes of a run: stable beams from LS 3 on, a null pileup on LS 2 as in real data."""
    rows = []
    for ls in range(1, n_ls + 1):
        stable = ls >= 3
        rows.append(
            {
                "delivered_lumi_per_lumisection": 0.5 * ls,
                "recorded_lumi_per_lumisection": 0.49 * ls,
                "pileup": None if ls == 2 else 60.0 - 0.1 * ls,
                "physics_flag": stable,
                "prescale_index": 6,
                "prescale_name": "2p0E34",
                "beams_stable": stable,
                "cms_active": True,
                "bpix_ready": stable,
                "fpix_ready": stable,
                "tibtid_ready": stable,
                "tob_ready": stable,
                "tecp_ready": stable,
                "tecm_ready": stable,
                "fill_number": fill,
                "run_number": run,
                "lumisection_number": ls,
                # attributes OMS has but we do not ask for; `fields` must drop them
                "start_time": f"2025-06-01T00:{ls % 60:02d}:00Z",
            }
        )
    return rows


@dataclass
class FakeOMS:
    """State and knobs of the fake SSO + OMS; `url` is set once the server listens."""

    lumisections: dict[int, list[dict]]
    token_lifetime_s: int = 1200
    # what real OMS sends to help paging: links.next and meta.totalResourceCount
    paging_hints: frozenset[str] = frozenset({"links", "meta"})
    ignore_offset: bool = False  # a broken server that always sends the first page
    lumisections_answer: tuple[int, str, str] | None = None  # forced (status, type, body)
    redirect_to: str | None = None  # answer every request with a 307 to this URL
    requests_seen: int = 0
    url: str = ""
    issued_tokens: list[str] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)
    bearer_tokens: list[str] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return self.url + API_PATH

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH


class FakeHandler(BaseHTTPRequestHandler):
    fake: FakeOMS  # set on a per-server subclass

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def _answer(self, status: int, payload: object, content_type="application/json") -> None:
        body = payload if isinstance(payload, str) else json.dumps(payload)
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _redirected(self) -> bool:
        self.fake.requests_seen += 1
        if self.fake.redirect_to is None:
            return False
        self.send_response(307)
        self.send_header("Location", self.fake.redirect_to)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def do_POST(self) -> None:
        if self._redirected():
            return
        if self.path != TOKEN_PATH:
            self._answer(404, {"error": f"no such path {self.path}"})
            return
        if self.headers.get("Content-Type") != "application/x-www-form-urlencoded":
            self._answer(400, {"error": "invalid_request", "error_description": "not a form"})
            return
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        form = {key: values[0] for key, values in parse_qs(body).items()}
        if form.get("grant_type") != "client_credentials" or form.get("audience") != "cmsoms-prod":
            self._answer(400, {"error": "invalid_request", "error_description": str(sorted(form))})
            return
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            self._answer(
                401, {"error": "unauthorized_client", "error_description": "Invalid client secret"}
            )
            return
        token = f"token-{len(self.fake.issued_tokens)}"
        self.fake.issued_tokens.append(token)
        self._answer(
            200,
            {
                "access_token": token,
                "expires_in": self.fake.token_lifetime_s,
                "token_type": "Bearer",
            },
        )

    def do_GET(self) -> None:
        if self._redirected():
            return
        parts = urlsplit(self.path)
        if parts.path != API_PATH + "/lumisections":
            self._answer(404, {"errors": [{"detail": f"no such path {parts.path}"}]})
            return
        authorization = self.headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ")
        if not authorization.startswith("Bearer ") or token not in self.fake.issued_tokens:
            self._answer(401, {"errors": [{"detail": "missing or unknown bearer token"}]})
            return
        self.fake.bearer_tokens.append(token)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        self.fake.queries.append(query)
        if self.fake.lumisections_answer is not None:
            status, content_type, body = self.fake.lumisections_answer
            self._answer(status, body, content_type)
            return
        problem = self._query_problem(query)
        if problem:
            self._answer(400, {"errors": [{"detail": problem}]})
            return
        self._answer(200, self._page(query, parts.path))

    def _query_problem(self, query: dict[str, str]) -> str | None:
        expected = {"fields", "filter[run_number][EQ]", "page[limit]", "page[offset]", "sort"}
        if set(query) != expected:
            return f"query parameters {sorted(query)}, expected {sorted(expected)}"
        if query["fields"].split(",") != EXPECTED_KEYS:
            return f"fields {query['fields']}"
        if query["sort"] != "lumisection_number":
            return f"sort {query['sort']}"
        if not 1 <= int(query["page[limit]"]) <= 5000:
            return f"page[limit] {query['page[limit]']}"
        return None

    def _page(self, query: dict[str, str], path: str) -> dict:
        run = int(query["filter[run_number][EQ]"])
        limit, offset = int(query["page[limit]"]), int(query["page[offset]"])
        fields = query["fields"].split(",")
        rows = sorted(self.fake.lumisections.get(run, []), key=lambda r: r["lumisection_number"])
        if self.fake.ignore_offset:
            offset = 0
        page = rows[offset : offset + limit]
        payload: dict = {
            "data": [
                {
                    "id": f"{run}_{row['lumisection_number']}",
                    "type": "lumisections",
                    "attributes": {name: row[name] for name in fields},
                }
                for row in page
            ]
        }
        if "links" in self.fake.paging_hints:
            more = offset + limit < len(rows)
            next_query = {**query, "page[offset]": str(offset + limit)}
            payload["links"] = {
                "self": f"{self.fake.url}{path}?{urlencode(query)}",
                "next": f"{self.fake.url}{path}?{urlencode(next_query)}" if more else None,
            }
        if "meta" in self.fake.paging_hints:
            payload["meta"] = {"totalResourceCount": len(rows)}
        return payload


@pytest.fixture
def serve_fake() -> Iterator:
    """Start fakes on ephemeral loopback ports; all are stopped after the test."""
    servers: list[ThreadingHTTPServer] = []

    def start(fake: FakeOMS) -> FakeOMS:
        handler = type("BoundFakeHandler", (FakeHandler,), {"fake": fake})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        servers.append(server)
        # a short poll interval only makes shutdown() return quickly at teardown
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        fake.url = f"http://127.0.0.1:{server.server_address[1]}"
        return fake

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def two_runs() -> dict[int, list[dict]]:
    return {
        390001: make_lumisections(390001, 7, 10001),
        390002: make_lumisections(390002, 4, 10002),
    }


def fetch(fake: FakeOMS, runs, **kwargs) -> dict[str, list]:
    kwargs.setdefault("credentials", omsid.OMSCredentials(CLIENT_ID, CLIENT_SECRET))
    return fetch_lumisections(runs, api_url=fake.api_url, token_url=fake.token_url, **kwargs)


def test_two_runs_give_the_oms_columns_in_the_requested_run_order(serve_fake, two_runs):
    fake = serve_fake(FakeOMS(two_runs))

    columns = fetch(fake, [390002, 390001])

    assert list(columns) == EXPECTED_KEYS
    assert {len(values) for values in columns.values()} == {11}
    assert columns["run_number"] == [390002] * 4 + [390001] * 7
    assert columns["lumisection_number"] == [1, 2, 3, 4, *range(1, 8)]
    expected_rows = two_runs[390002] + two_runs[390001]
    for name in EXPECTED_KEYS:
        assert columns[name] == [row[name] for row in expected_rows], name
    assert columns["pileup"][1] is None  # OMS nulls stay nulls
    # one token for the whole download, one full-size page per run
    assert fake.issued_tokens == ["token-0"]
    assert [q["filter[run_number][EQ]"] for q in fake.queries] == ["390002", "390001"]
    assert {q["page[limit]"] for q in fake.queries} == {"5000"}


@pytest.mark.parametrize(
    ("n_ls", "paging_hints", "expected_offsets"),
    [
        (7, {"links", "meta"}, ["0", "3", "6"]),
        (7, set(), ["0", "3", "6"]),
        # a full last page: links.next or totalResourceCount saves one request
        (6, {"links", "meta"}, ["0", "3"]),
        (6, {"links"}, ["0", "3"]),
        (6, {"meta"}, ["0", "3"]),
        (6, set(), ["0", "3", "6"]),
    ],
)
def test_paging_collects_every_lumisection_once(serve_fake, n_ls, paging_hints, expected_offsets):
    fake = serve_fake(
        FakeOMS(
            {390001: make_lumisections(390001, n_ls, 10001)},
            paging_hints=frozenset(paging_hints),
        )
    )

    columns = fetch(fake, [390001], page_limit=3)

    assert columns["lumisection_number"] == list(range(1, n_ls + 1))
    assert [q["page[offset]"] for q in fake.queries] == expected_offsets
    assert {q["page[limit]"] for q in fake.queries} == {"3"}


def test_a_server_ignoring_the_page_offset_cannot_loop_forever(serve_fake):
    fake = serve_fake(FakeOMS({390001: make_lumisections(390001, 7, 10001)}, ignore_offset=True))

    with pytest.raises(OMSAccessError, match=r"lumisections of run 390001 twice"):
        fetch(fake, [390001], page_limit=3)
    assert len(fake.queries) == 2


def test_an_expiring_token_is_renewed_between_pages(serve_fake):
    fake = serve_fake(FakeOMS({390001: make_lumisections(390001, 7, 10001)}, token_lifetime_s=0))

    columns = fetch(fake, [390001], page_limit=3)

    assert len(columns["run_number"]) == 7
    assert fake.bearer_tokens == ["token-0", "token-1", "token-2"]


def test_a_run_unknown_to_oms_gives_no_rows(serve_fake, two_runs):
    fake = serve_fake(FakeOMS(two_runs))

    columns = fetch(fake, [390001, 399999])

    assert columns["run_number"] == [390001] * 7


def test_a_wrong_secret_is_a_clear_error_without_the_secret(serve_fake, two_runs):
    fake = serve_fake(FakeOMS(two_runs))
    wrong = omsid.OMSCredentials(CLIENT_ID, "not-the-secret")

    with pytest.raises(OMSAccessError, match=r"refused the client credentials") as caught:
        fetch(fake, [390001], credentials=wrong)

    message = str(caught.value)
    assert "HTTP 401" in message and "OMS_CLIENT_SECRET" in message
    assert "Invalid client secret" in message
    assert "not-the-secret" not in message
    assert fake.queries == []  # OMS never asked without a token


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((403, "application/json", '{"errors": []}'), r"OMS refused the access token \(HTTP 403"),
        ((500, "text/plain", "database   unavailable\n"), r"HTTP 500 .*'database unavailable'"),
        ((200, "text/html", "<html>CERN Single Sign-On</html>"), r"non-JSON content.*text/html"),
        ((200, "application/json", '{"errors": ["?"]}'), r"no 'data' list"),
    ],
)
def test_oms_errors_are_clear(serve_fake, two_runs, answer, expected):
    fake = serve_fake(FakeOMS(two_runs, lumisections_answer=answer))

    with pytest.raises(OMSAccessError, match=expected):
        fetch(fake, [390001])


def test_a_redirect_of_the_token_request_is_not_followed(serve_fake, two_runs):
    """A 307 keeps the method and body: following it would POST the secret to the new URL."""
    thief = serve_fake(FakeOMS(lumisections={}))
    sso = serve_fake(FakeOMS(lumisections=two_runs, redirect_to=thief.token_url))
    with pytest.raises(OMSAccessError, match=r"redirect \(HTTP 307 to 'http://127\.0\.0\.1"):
        fetch_lumisections(
            [390001],
            api_url=sso.api_url,
            token_url=sso.token_url,
            credentials=omsid.OMSCredentials(CLIENT_ID, CLIENT_SECRET),
        )
    assert sso.requests_seen == 1 and thief.requests_seen == 0


def test_a_redirect_of_the_oms_api_is_not_followed(serve_fake, two_runs):
    thief = serve_fake(FakeOMS(lumisections={}))
    oms = serve_fake(FakeOMS(lumisections=two_runs))
    sso = serve_fake(FakeOMS(lumisections={}))
    oms.redirect_to = thief.api_url + "/lumisections"
    with pytest.raises(OMSAccessError, match="not followed"):
        fetch_lumisections(
            [390001],
            api_url=oms.api_url,
            token_url=sso.token_url,
            credentials=omsid.OMSCredentials(CLIENT_ID, CLIENT_SECRET),
        )
    assert thief.requests_seen == 0


def test_an_unreachable_server_is_a_clear_error():
    with socket.socket() as probe:  # a port that was just free: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    with pytest.raises(OMSAccessError, match=rf"Could not reach {url}{TOKEN_PATH}"):
        fetch_lumisections(
            [390001],
            api_url=url + API_PATH,
            token_url=url + TOKEN_PATH,
            credentials=omsid.OMSCredentials(CLIENT_ID, CLIENT_SECRET),
        )


@pytest.mark.parametrize(
    ("api_url", "token_url", "expected"),
    [
        ("http://cmsoms.cern.ch/agg/api/v1", None, r"Refusing plain http for the OMS API URL"),
        (None, "http://auth.cern.ch/auth/realms/cern/api-access/token", r"plain http.*SSO token"),
        ("ftp://cmsoms.cern.ch/agg/api/v1", None, r"must be an https URL"),
    ],
)
def test_plain_http_is_refused_outside_loopback(api_url, token_url, expected):
    # refused before any connection: these hosts are never contacted
    with pytest.raises(ValueError, match=expected):
        fetch_lumisections(
            [390001],
            api_url=api_url,
            token_url=token_url,
            credentials=omsid.OMSCredentials(CLIENT_ID, CLIENT_SECRET),
        )


def test_a_session_without_tls_verification_is_refused():
    import requests

    with requests.Session() as session:
        session.verify = False
        with pytest.raises(ValueError, match=r"verify=False"):
            fetch_lumisections(
                [390001],
                credentials=omsid.OMSCredentials(CLIENT_ID, CLIENT_SECRET),
                session=session,
            )


@pytest.mark.parametrize("runs", [[], [-5], ["390001"], [True], "390001"])
def test_bad_run_numbers_are_refused(runs):
    with pytest.raises(ValueError, match=r"[Rr]un"):
        fetch_lumisections(runs, credentials=omsid.OMSCredentials(CLIENT_ID, CLIENT_SECRET))


def test_missing_environment_variables_are_named(monkeypatch):
    monkeypatch.delenv("OMS_CLIENT_ID", raising=False)
    monkeypatch.delenv("OMS_CLIENT_SECRET", raising=False)
    with pytest.raises(omsid.MissingCredentialsError, match=r"OMS_CLIENT_ID, OMS_CLIENT_SECRET"):
        omsid.credentials()

    monkeypatch.setenv("OMS_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("OMS_CLIENT_SECRET", "  ")  # blank counts as missing
    only_secret = r"variable\(s\) OMS_CLIENT_SECRET unset"
    with pytest.raises(omsid.MissingCredentialsError, match=only_secret):
        omsid.credentials()
    with pytest.raises(omsid.MissingCredentialsError, match=r"OMS_CLIENT_SECRET"):
        omsid.client_secret()
    assert omsid.client_id() == CLIENT_ID

    monkeypatch.setenv("OMS_CLIENT_SECRET", CLIENT_SECRET)
    assert omsid.credentials() == omsid.OMSCredentials(CLIENT_ID, CLIENT_SECRET)


def test_urls_default_to_production_and_follow_the_environment(monkeypatch):
    monkeypatch.delenv("OMS_API_URL", raising=False)
    monkeypatch.delenv("OMS_TOKEN_URL", raising=False)
    assert omsid.api_url() == "https://cmsoms.cern.ch/agg/api/v1"
    assert omsid.token_url() == "https://auth.cern.ch/auth/realms/cern/api-access/token"
    monkeypatch.setenv("OMS_API_URL", "https://cmsoms-test.example/agg/api/v1")
    assert omsid.api_url() == "https://cmsoms-test.example/agg/api/v1"


def test_the_secret_never_shows_in_repr():
    credentials = omsid.OMSCredentials(CLIENT_ID, CLIENT_SECRET)

    assert CLIENT_SECRET not in repr(credentials)
    assert CLIENT_SECRET not in str(credentials)
    assert CLIENT_ID in repr(credentials)


def point_environment_at(monkeypatch, fake: FakeOMS, secret: str = CLIENT_SECRET) -> None:
    monkeypatch.setenv("OMS_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("OMS_CLIENT_SECRET", secret)
    monkeypatch.setenv("OMS_API_URL", fake.api_url)
    monkeypatch.setenv("OMS_TOKEN_URL", fake.token_url)


def test_fetch_oms_command_writes_the_oms_json(serve_fake, two_runs, monkeypatch, tmp_path):
    fake = serve_fake(FakeOMS(two_runs))
    point_environment_at(monkeypatch, fake)
    out_path = tmp_path / "oms" / "omsdata.json"

    # the installed console entry point in a fresh interpreter: `omsid` must import from there
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixelring2nmf.cli",
            "fetch-oms",
            "--runs",
            "390001",
            "390002",
            "--out",
            str(out_path),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=tmp_path,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "11 lumisections from 2 run(s)" in result.stdout
    with out_path.open() as stream:
        columns = json.load(stream)
    assert list(columns) == EXPECTED_KEYS
    assert columns["run_number"] == [390001] * 7 + [390002] * 4
    assert columns["pileup"][1] is None
    # and the project's own reader takes it as it takes the real OMS files
    oms = omstools.read_oms_json(out_path)
    assert list(oms.columns) == EXPECTED_KEYS and len(oms) == 11
    assert not list(out_path.parent.glob("*.partial"))


def test_fetch_oms_command_reports_missing_credentials(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("OMS_CLIENT_ID", raising=False)
    monkeypatch.delenv("OMS_CLIENT_SECRET", raising=False)
    out_path = tmp_path / "omsdata.json"

    exit_code = cli.main(["fetch-oms", "--runs", "390001", "--out", str(out_path)])

    assert exit_code == 2
    assert "OMS_CLIENT_ID, OMS_CLIENT_SECRET" in capsys.readouterr().err
    assert not out_path.exists()


def test_fetch_oms_command_reports_a_wrong_secret(
    serve_fake, two_runs, monkeypatch, tmp_path, capsys
):
    fake = serve_fake(FakeOMS(two_runs))
    point_environment_at(monkeypatch, fake, secret="not-the-secret")
    out_path = tmp_path / "omsdata.json"

    exit_code = cli.main(["fetch-oms", "--runs", "390001", "--out", str(out_path)])

    assert exit_code == 2
    assert "refused the client credentials" in capsys.readouterr().err
    assert not out_path.exists()


def test_fetch_oms_command_refuses_to_write_nothing(
    serve_fake, two_runs, monkeypatch, tmp_path, capsys
):
    fake = serve_fake(FakeOMS(two_runs))
    point_environment_at(monkeypatch, fake)
    args = ["fetch-oms", "--runs", "399999", "--out", str(tmp_path / "omsdata.json")]
    assert cli.main(args) == 2
    assert "no lumisection for run(s) [399999]" in capsys.readouterr().err
    assert not (tmp_path / "omsdata.json").exists()


def test_module_imports_without_network_libraries():
    # the module must import in an interpreter where `requests` cannot be imported
    code = (
        "import sys; sys.modules['requests'] = None; "
        "import pixelring2nmf.remote.oms_api as m; print(len(m.OMS_COLUMNS))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "17"
