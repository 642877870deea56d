"""A loopback fake of DIALS that speaks its JSON: enough of the API for the toolkit's commands.

Endpoints (under /api/v1/, as cmsdials calls them):
- `th2/`: the histograms it holds (either ring's ME) filtered by me, dataset__regex,
  run_number(__gte/__lte), in cursor pages `{"next": url-with-next_token, "previous", "results"}`;
- `oms-proxy/?endpoint=lumisections&filter[run_number][EQ]=..&page[limit]=..&page[offset]=..`:
  OMS's JSON:API answer (`data[i].attributes`, `links.next`);
- `ml-bad-lumisection/`: what a registered model flagged, cursor pages.
And what `dismcli build` and `package` (cmsdism 0.6.1) call (DOMAIN.md section 14):
- `mes/`: the MEs, a plain list of `{me_id, me, count, dim}`;
- `th2/?me_id=N`: a cursor page of that ME's histograms (also filtered by `me`, above);
- `dataset-index/?page_size=500`, `ml-models-index/?name=...`: cursor pages;
- `POST minio/ml-presigned-put-object/` `{"workspace", "object_name"}` -> `{"url"}`, a URL
  made by `presign(workspace, object_name)` (the tests' loopback S3).
And the CERN SSO's client-credentials token endpoint (`/auth/realms/cern/api-access/token`).

Requests without a valid X-CLIENT-SECRET header or Bearer token get 401, as DIALS answers.
`fail[(endpoint, page_index)] = n` makes that page answer 503 the next n times;
`oms_ignores_offset` makes the OMS proxy send the first page whatever offset is asked. Every
request is logged (endpoint, page index, status) so tests can prove no page was fetched twice.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

UNAUTHORIZED = {"detail": "Authentication credentials were not provided."}


@dataclass
class FakeDials:
    """State of the fake: data it serves, credentials it accepts, failures, the request log."""

    h2d_rows: list[dict]
    oms_rows: list[dict] = field(default_factory=list)
    bad_lumis: list[dict] = field(default_factory=list)
    secret: str = "s3cret"
    client_id: str = "pixel-app"
    fail: dict[tuple[str, int], int] = field(default_factory=dict)
    oms_ignores_offset: bool = False  # a broken proxy: every OMS page is the first one
    mes: list[dict] = field(default_factory=list)
    datasets: list[dict] = field(default_factory=list)
    ml_models: list[dict] = field(default_factory=list)
    presign: Callable[[str, str], str] | None = None
    presigned: list[dict] = field(default_factory=list)  # the bodies of presign requests
    log: list[tuple[str, int, int]] = field(default_factory=list)
    workspaces: list[str | None] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeDials:
        fake = self

        class Handler(_Handler):
            state = fake

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def served(self, endpoint: str) -> list[int]:
        """Page indices answered 200 on `endpoint`, in order."""
        return [page for name, page, status in self.log if name == endpoint and status == 200]


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def _offset(token: str | None) -> int:
    return int(base64.urlsafe_b64decode(token.encode()).decode()[2:]) if token else 0


class _Handler(BaseHTTPRequestHandler):
    state: FakeDials

    def log_message(self, *args) -> None:  # quiet test output
        pass

    def _send(self, status: int, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self) -> bool:
        if self.headers.get("X-CLIENT-SECRET") == self.state.secret:
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and token in self.state.tokens

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path == "/api/v1/minio/ml-presigned-put-object/":
            self._presign()
            return
        if path != "/auth/realms/cern/api-access/token":
            self._send(404, {"detail": "Not found."})
            return
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if (form.get("client_id"), form.get("client_secret")) != (
            self.state.client_id,
            self.state.secret,
        ):
            self._send(401, {"error": "unauthorized_client"})
            return
        token = secrets.token_hex(8)
        self.state.tokens.add(token)
        self._send(200, {"access_token": token, "expires_in": 300, "token_type": "Bearer"})

    def _presign(self) -> None:
        if not self._authorised():
            self.state.log.append(("minio", -1, 401))
            self._send(401, UNAUTHORIZED)
            return
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length))
        self.state.presigned.append(request)
        self.state.log.append(("minio", 0, 200))
        url = self.state.presign(request["workspace"], request["object_name"])
        self._send(200, {"url": url})

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        endpoint = parts.path.removeprefix("/api/v1/").strip("/")
        handlers = {
            "th2": self._th2,
            "oms-proxy": self._oms,
            "ml-bad-lumisection": self._bad_lumis,
            "mes": self._mes,
            "dataset-index": self._datasets,
            "ml-models-index": self._ml_models,
        }
        if endpoint not in handlers:
            self._send(404, {"detail": "Not found."})
            return
        if not self._authorised():
            self.state.log.append((endpoint, -1, 401))
            self._send(401, UNAUTHORIZED)
            return
        self.state.workspaces.append(self.headers.get("Workspace"))
        handlers[endpoint](endpoint, query, parts)

    def _failing(self, endpoint: str, page: int) -> bool:
        key = (endpoint, page)
        if self.state.fail.get(key, 0) > 0:
            self.state.fail[key] -= 1
            self.state.log.append((endpoint, page, 503))
            self._send(503, {"detail": "Service temporarily unavailable."})
            return True
        return False

    def _paged(self, endpoint: str, rows: list[dict], query: dict, parts) -> None:
        size = int(query.get("page_size", 50))
        offset = _offset(query.get("next_token"))
        page = offset // size
        if self._failing(endpoint, page):
            return
        chunk = rows[offset : offset + size]
        more = offset + size < len(rows)
        rest = {k: v for k, v in query.items() if k != "next_token"}
        cursor = urlencode({**rest, "next_token": _cursor(offset + size)})
        next_url = f"{self.state.url}{parts.path}?{cursor}" if more else None
        self.state.log.append((endpoint, page, 200))
        self._send(200, {"next": next_url, "previous": None, "results": chunk})

    def _mes(self, endpoint: str, query: dict, parts) -> None:
        self.state.log.append((endpoint, 0, 200))
        self._send(200, self.state.mes)  # not paginated

    def _datasets(self, endpoint: str, query: dict, parts) -> None:
        self._paged(endpoint, self.state.datasets, query, parts)

    def _ml_models(self, endpoint: str, query: dict, parts) -> None:
        rows = [m for m in self.state.ml_models if query.get("name") in (None, m["name"])]
        self._paged(endpoint, rows, query, parts)

    def _th2(self, endpoint: str, query: dict, parts) -> None:
        rows = self.state.h2d_rows
        if "me" in query:
            rows = [r for r in rows if r["me"] == query["me"]]
        if "me_id" in query:
            rows = [r for r in rows if r["me_id"] == int(query["me_id"])]
        if "dataset__regex" in query:
            rows = [r for r in rows if re.search(query["dataset__regex"], r["dataset"])]
        for key, test in (
            ("run_number", lambda r, v: r["run_number"] == v),
            ("run_number__gte", lambda r, v: r["run_number"] >= v),
            ("run_number__lte", lambda r, v: r["run_number"] <= v),
        ):
            if key in query:
                rows = [r for r in rows if test(r, int(query[key]))]
        self._paged(endpoint, rows, query, parts)

    def _bad_lumis(self, endpoint: str, query: dict, parts) -> None:
        rows = self.state.bad_lumis
        for key, column in (
            ("model_id__in", "model_id"),
            ("run_number__in", "run_number"),
            ("dataset_id__in", "dataset_id"),
        ):
            if key in query:
                wanted = {int(v) for v in query[key].split(",")}
                rows = [r for r in rows if r[column] in wanted]
        self._paged(endpoint, rows, query, parts)

    def _oms(self, endpoint: str, query: dict, parts) -> None:
        if query.get("endpoint") != "lumisections":
            self._send(400, {"detail": "unknown OMS endpoint"})
            return
        run = int(query["filter[run_number][EQ]"])
        limit = int(query.get("page[limit]", 100))
        offset = 0 if self.state.oms_ignores_offset else int(query.get("page[offset]", 0))
        if self._failing(endpoint, offset // limit):
            return
        rows = [r for r in self.state.oms_rows if r["run_number"] == run]
        chunk = rows[offset : offset + limit]
        more = offset + limit < len(rows)
        self.state.log.append((endpoint, offset // limit, 200))
        self._send(
            200,
            {
                "data": [
                    {
                        "id": f"{run}_{r['lumisection_number']}",
                        "type": "lumisections",
                        "attributes": r,
                    }
                    for r in chunk
                ],
                "links": {"next": "more" if more else None},
                "meta": {"totalResourceCount": len(rows)},
            },
        )
