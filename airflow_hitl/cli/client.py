"""The command line's client of the api-server: decisions sent as the caller's own Airflow user.

``airflow hitl approvals approve|reject|cancel`` never write the store: they call the REST
API (``/hitl/api/v1/approvals/...``) with the caller's Airflow token, so the api-server
decides exactly as for any REST call (authentication, DAG access, the request's policy, the
audit trail), recording source ``cli`` (header :data:`~airflow_hitl.vocabulary.CLIENT_HEADER`)
and the OS user and host the command ran as. Who decides comes from the token alone.
``airflow hitl standing ...`` calls ``/hitl/api/v1/standing-approvals`` the same way: the
token's user is the approver of what it creates, and sees (or, as an admin, revokes) what the
api-server lets them.

The token is the caller's own: the environment variable :data:`TOKEN_ENV`, a file, or a user
name and password exchanged at Airflow's ``POST /auth/token``. Every failure is an
:class:`ApiError` whose message is one line naming the status and the api-server's reason.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from airflow_hitl import __version__
from airflow_hitl.settings import conf_get, option
from airflow_hitl.vocabulary import CLIENT_DETAIL_HEADERS, CLIENT_HEADER, Source

#: The environment variable holding the caller's Airflow token (a JWT from ``POST /auth/token``).
TOKEN_ENV = "AIRFLOW_HITL_TOKEN"
#: Where the approvals live under the api-server's URL.
APPROVALS_PATH = "/hitl/api/v1/approvals"
#: Where the standing approvals live under the api-server's URL.
STANDING_PATH = "/hitl/api/v1/standing-approvals"
#: The flags that give a token, named in every message that asks for one.
TOKEN_HINT = f"set {TOKEN_ENV}, --token-file or --username"
# A loaded api-server may take a while; connecting may not (nothing is sent until it does).
_TIMEOUT = httpx.Timeout(120.0, connect=15.0)
# Longer details are cut: an error must stay one readable line.
_MAX_DETAIL = 500


class ApiError(Exception):
    """A call to the api-server failed or was refused; the message is one line, ready for stderr."""


def default_api_url() -> str:
    """The api-server the command line calls: ``[hitl] base_url`` when set, else ``[api] base_url``.

    ``[hitl] base_url`` has a default of its own (``http://localhost:8080``); only a value
    that differs from it is taken as set, so a deployment that configured only Airflow's
    ``[api] base_url`` is called there.
    """
    hitl = conf_get("base_url").strip()
    if hitl and hitl != option("base_url").default:
        return hitl.rstrip("/")
    try:
        from airflow.configuration import conf

        airflow_url = conf.get("api", "base_url", fallback=None)
    except Exception:  # reading config must not hide the fallback
        airflow_url = None
    return str(airflow_url or hitl or option("base_url").default).strip().rstrip("/")


def os_user() -> str:
    """The operating-system user running this command (recorded in the audit trail)."""
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (containers with an arbitrary uid)
        return str(os.getuid())


def client_details() -> dict[str, str]:
    """Where this command runs (OS user, host name): recorded with its decisions."""
    return {"os_user": os_user(), "hostname": socket.gethostname()}


def _header_value(value: str) -> str:
    # HTTP headers are ASCII; an exotic user or host name is escaped rather than refused.
    return value.encode("ascii", "backslashreplace").decode("ascii")[:255]


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_DETAIL else line[: _MAX_DETAIL - 3] + "..."


def _detail(response: httpx.Response) -> str:
    """The api-server's reason: FastAPI's ``detail`` (a text, or field errors), else the body's text."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return _one_line(response.text) or "no reason given"
    if isinstance(detail, list):
        parts = []
        for error in detail:
            if isinstance(error, Mapping):
                loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {error.get('msg')}" if loc else str(error.get("msg")))
            else:
                parts.append(str(error))
        return _one_line("; ".join(parts))
    if detail is None:
        return _one_line(response.text) or "no reason given"
    return _one_line(detail if isinstance(detail, str) else json.dumps(detail))


def _check_url(api_url: str) -> str:
    if not api_url.startswith(("http://", "https://")):
        raise ApiError(f"--api-url {api_url!r} must be an http:// or https:// URL of the Airflow api-server")
    return api_url.rstrip("/")


#: What an unanswered decision may have done, and where to look before retrying it.
DECISION_UNKNOWN = "the decision may or may not have been recorded: look with `airflow hitl approvals show`"
#: The same for a standing approval created or revoked.
STANDING_UNKNOWN = "it may or may not have been recorded: look with `airflow hitl standing list`"


def _send(
    api_url: str, method: str, path: str, *, decides: bool, unknown: str = DECISION_UNKNOWN, **kwargs: Any
) -> httpx.Response:
    """One call; transport failures become an :class:`ApiError` saying whether anything may have changed.

    ``decides``: the call changes something, so a call left unanswered may have done it;
    ``unknown`` then says so and where to look.
    """
    url = f"{api_url}{path}"
    try:
        with httpx.Client(timeout=_TIMEOUT) as http:
            return http.request(method, url, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol, httpx.InvalidURL) as err:
        raise ApiError(
            f"cannot reach the api-server at {api_url}: {_one_line(str(err)) or type(err).__name__}; "
            "nothing was recorded (name it with --api-url)"
        ) from None
    except httpx.TimeoutException:
        outcome = f"{unknown} before retrying" if decides else "nothing was changed"
        raise ApiError(f"no answer from the api-server at {api_url} in time; {outcome}") from None
    except httpx.HTTPError as err:
        raise ApiError(f"{method} {url} failed: {_one_line(str(err)) or type(err).__name__}") from None


def _refused(response: httpx.Response, api_url: str) -> ApiError:
    status = f"{response.status_code} {response.reason_phrase}".strip()
    hint = f" (get a valid token: {TOKEN_HINT})" if response.status_code == 401 else ""
    return ApiError(f"{status} from {api_url}: {_detail(response)}{hint}")


def _json_of(response: httpx.Response, api_url: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ApiError(f"{api_url} answered {response.status_code} without JSON: is it Airflow's api-server?") from None


def login(api_url: str, username: str, password: str) -> str:
    """Exchange ``username`` and ``password`` for a token at Airflow's ``POST /auth/token``."""
    api_url = _check_url(api_url)
    response = _send(api_url, "POST", "/auth/token", decides=False, json={"username": username, "password": password})
    if response.status_code >= 400:
        raise ApiError(f"logging in as {username!r}: {_refused(response, api_url)}")
    token = _json_of(response, api_url)
    if not isinstance(token, Mapping) or not isinstance(token.get("access_token"), str):
        raise ApiError(f"{api_url}/auth/token answered no access_token")
    return str(token["access_token"])


def prompt_password(username: str) -> str:
    """The password of ``username``: prompted for on a terminal, else the first line of stdin (scripts)."""
    stdin = sys.stdin
    if stdin is not None and not stdin.isatty():
        password = stdin.readline().rstrip("\r\n")
        if not password:
            raise ApiError(f"--username {username}: no password on stdin (give it as the first line)")
        return password
    try:
        return getpass.getpass(f"Password of Airflow user {username}: ")
    except (EOFError, KeyboardInterrupt):
        raise ApiError(f"--username {username}: no password given") from None


def obtain_token(
    api_url: str,
    *,
    token_file: str | None = None,
    username: str | None = None,
    password: Callable[[str], str] = prompt_password,
) -> str:
    """The caller's token: ``--username`` (logged in now), ``--token-file``, else :data:`TOKEN_ENV`."""
    if token_file and username:
        raise ApiError("give either --token-file or --username, not both")
    if username is not None:
        if not username.strip():
            raise ApiError("--username must name an Airflow user")
        token = login(api_url, username.strip(), password(username.strip()))
    elif token_file:
        try:
            with open(os.path.expanduser(token_file), encoding="utf-8") as handle:
                token = handle.read().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ApiError(f"--token-file {token_file}: {err.strerror if isinstance(err, OSError) else err}") from None
        if not token:
            raise ApiError(f"--token-file {token_file} is empty")
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise ApiError(f"the api-server needs your own Airflow token: {TOKEN_HINT}")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ApiError("the token is not a token (one line of printable ASCII, as POST /auth/token gives)")
    return token


class ApiClient:
    """The approvals REST API called as one Airflow user, with the command line's client details."""

    def __init__(self, *, api_url: str, token: str) -> None:
        self.api_url = _check_url(api_url)
        details = client_details()
        self._headers = {
            "Authorization": f"Bearer {token}",
            "User-Agent": f"airflow-hitl-cli/{__version__}",
            CLIENT_HEADER: str(Source.CLI),
            **{CLIENT_DETAIL_HEADERS[name]: _header_value(value) for name, value in details.items()},
        }

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """``GET /hitl/api/v1/approvals<path>``: the answer's JSON, or an :class:`ApiError`."""
        return self._call("GET", f"{APPROVALS_PATH}{path}", decides=False, params=dict(params or {}))

    def decide(self, approval_id: str, action: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST .../<id>/<action>`` (approve, reject, cancel): the request as decided."""
        return self._record(
            self._call("POST", f"{APPROVALS_PATH}/{approval_id}/{action}", decides=True, json=dict(body))
        )

    def list_standing(self, params: Mapping[str, Any] | None = None) -> tuple[list[dict[str, Any]], int]:
        """``GET /hitl/api/v1/standing-approvals``: the page of standing approvals and how many match."""
        page = self._call("GET", STANDING_PATH, decides=False, params=dict(params or {}))
        items = page.get("standing_approvals") if isinstance(page, Mapping) else None
        if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
            raise ApiError(f"{self.api_url}{STANDING_PATH} answered no list of standing_approvals")
        total = page.get("total_entries")
        return [dict(item) for item in items], total if isinstance(total, int) else len(items)

    def create_standing(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /hitl/api/v1/standing-approvals``: the standing approval as stored (the caller approves)."""
        answer = self._call("POST", STANDING_PATH, decides=True, unknown=STANDING_UNKNOWN, json=dict(body))
        return self._record(answer)

    def revoke_standing(self, standing_id: str) -> dict[str, Any]:
        """``DELETE /hitl/api/v1/standing-approvals/<id>``: the standing approval as revoked."""
        answer = self._call("DELETE", f"{STANDING_PATH}/{standing_id}", decides=True, unknown=STANDING_UNKNOWN)
        return self._record(answer)

    def _record(self, answer: Any) -> dict[str, Any]:
        # A JSON object is what every route that changes something answers; anything else is not ours.
        if not isinstance(answer, Mapping):
            raise ApiError(f"{self.api_url} answered {type(answer).__name__} where a record was due")
        return dict(answer)

    def _call(self, method: str, path: str, *, decides: bool, **kwargs: Any) -> Any:
        response = _send(self.api_url, method, path, decides=decides, headers=self._headers, **kwargs)
        if response.status_code >= 400:
            raise _refused(response, self.api_url)
        return _json_of(response, self.api_url)
