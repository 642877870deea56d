"""The one HTTP layer of the toolkit's own requests: TLS always, no redirects, clear errors.

Credentials and tokens travel with these requests (the CERN SSO's client secret, OMS bearer
tokens), so a URL must be https (plain http only for a test server on this machine), TLS
verification is never turned off, and a redirect is never followed: it could point anywhere,
plain http included. Every failure is a `RemoteError` (or the subclass the caller names) that
says which URL failed and how. `requests` is imported inside the functions.

DIALS is reached through the `cmsdials` client, which makes its own requests; its base URL goes
through `checked_url` here all the same.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..errors import OptionError, RemoteError

# Plain http would expose the secret and the token; only a test server on this machine may use it.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_BODY_CHARS = 200


def checked_url(url: str, what: str) -> str:
    """Accept https anywhere and plain http only on loopback (OMS, the SSO, DIALS)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return url
    if parts.scheme == "http":
        raise OptionError(
            f"Refusing plain http for the {what} {url!r}: credentials and tokens travel only "
            f"over TLS (https); http is allowed for loopback test servers only."
        )
    raise OptionError(f"The {what} must be an https URL, got {url!r}.")


def short_body(response: Any) -> str:
    """First characters of an error body on one line: enough to diagnose, never a flood."""
    text = " ".join(response.text.split())
    return text[:_BODY_CHARS] + ("..." if len(text) > _BODY_CHARS else "")


def send(
    session: Any,
    method: str,
    url: str,
    timeout_s: tuple[float, float],
    *,
    error: type[RemoteError] = RemoteError,
    **kwargs: Any,
):
    """One HTTP request; network failures and redirects become `error` naming the URL."""
    import requests

    if session.verify is False:
        raise OptionError("The session has TLS verification turned off (verify=False); refusing.")
    try:
        response = session.request(method, url, timeout=timeout_s, allow_redirects=False, **kwargs)
    except requests.exceptions.SSLError as cause:
        raise error(
            f"TLS verification failed for {url}: {cause}. If the server uses a private CA, "
            f"point REQUESTS_CA_BUNDLE at its CA bundle (verification is never turned off)."
        ) from cause
    except requests.exceptions.Timeout as cause:
        raise error(
            f"No answer from {url} in time (connect {timeout_s[0]:g} s, read {timeout_s[1]:g} s): "
            f"{cause}"
        ) from cause
    except requests.exceptions.RequestException as cause:
        raise error(f"Could not reach {url}: {cause}") from cause
    if 300 <= response.status_code < 400:
        raise error(
            f"{url} answered a redirect (HTTP {response.status_code} to "
            f"{response.headers.get('Location', 'nowhere')!r}); not followed: credentials and "
            "tokens go only to the configured URLs. Point the URL at the final address."
        )
    return response


def json_object(response: Any, what: str, *, error: type[RemoteError] = RemoteError) -> dict:
    """The JSON object of a successful answer; an HTML login page or junk is a clear error."""
    try:
        payload = response.json()
    except ValueError as cause:
        raise error(
            f"{what} answered HTTP {response.status_code} with non-JSON content "
            f"({response.headers.get('Content-Type', 'no content type')}): "
            f"{short_body(response)!r}. A login page here means the token was not accepted."
        ) from cause
    if not isinstance(payload, dict):
        raise error(f"{what} answered a JSON {type(payload).__name__}, not an object.")
    return payload
