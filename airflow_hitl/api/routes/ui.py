"""``/ui``: the Approvals pages in the Airflow UI (inbox, history, delegations, standing, analytics, task view).

The pages are server-rendered shells (Jinja2, autoescaped) plus one local script and one
stylesheet (the analytics page also loads the charting library kept in the package, see
:data:`CHART_SCRIPT`); the script reads and decides through the REST API under ``/api/v1`` with the
Airflow UI's ``_token`` cookie, so nobody logs in twice. A page request without a valid
cookie is redirected to Airflow's own login, which sends the user back here afterwards.

Every page answers with a strict Content-Security-Policy (scripts and styles from this app
only, no inline script), so even a rendering mistake could not run an injected script; the
script itself only ever writes user-supplied values with ``textContent``.

Decisions made in the pages go through ``/ui/api/...`` here rather than the REST API, for
two reasons: they are recorded with source ``ui`` (the REST API records ``api``), and they
are protected against cross-site requests. The cookie is ``SameSite=Lax`` and bodies must
be JSON, and on top of that these routes refuse any request without the
``X-Requested-With: XMLHttpRequest`` header (which a cross-site form cannot send and a
cross-site script cannot add without a CORS preflight we never grant) or whose ``Origin``
is another site.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from airflow_hitl import __version__, vocabulary
from airflow_hitl.api.datamodels import ApproveBody, BulkBody, RejectBody
from airflow_hitl.api.deps import ManagerDep, body_decision, canonical_approval_id, client_of, decide_many
from airflow_hitl.api.security import Caller, CallerDep, authenticate, require_same_site
from airflow_hitl.exceptions import InvalidInput
from airflow_hitl.identity import is_admin
from airflow_hitl.records import Approval
from airflow_hitl.settings import HitlSettings
from airflow_hitl.vocabulary import STANDING_STATES, VOTES, Action, Source

router = APIRouter(prefix="/ui", include_in_schema=False)

#: Mount point of our app inside the api-server (``HitlPlugin`` mounts it at ``/hitl``).
_STATIC_PACKAGE = "airflow_hitl.ui"
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}
#: The analytics page's charts: Chart.js's UMD build from the npm registry, kept in the package
#: with its licence (``static/vendor/chart.js-<version>/``), never fetched from the internet.
CHART_SCRIPT = "vendor/chart.js-4.6.2/chart.umd.min.js"

# 'self' for scripts, styles and fetches; no inline script at all; framing only by the
# Airflow UI on the same origin (the external view's iframe).
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'self'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@lru_cache(maxsize=1)
def _templates() -> Environment:
    # Autoescape every template: values reach the HTML only as escaped text.
    return Environment(
        loader=PackageLoader(_STATIC_PACKAGE, "templates"),
        autoescape=select_autoescape(["html"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _airflow_base(request: Request) -> str:
    """Path prefix of the Airflow UI (empty unless Airflow itself runs under a sub-path)."""
    root = request.scope.get("root_path", "") or ""
    # Our app is mounted at <airflow base>/hitl; strip our own mount point.
    return root[: -len("/hitl")] if root.endswith("/hitl") else ""


def _login_redirect(request: Request) -> RedirectResponse:
    """Send the browser to Airflow's login, which returns it to this page afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    login = f"{_airflow_base(request)}/api/v2/auth/login?{urlencode({'next': target})}"
    return RedirectResponse(login, status_code=status.HTTP_303_SEE_OTHER)


async def _page_caller(request: Request) -> Caller | None:
    """The caller from the UI cookie (or a bearer header), or None when there is no valid one."""
    try:
        return await authenticate(request, None)
    except HTTPException as err:
        if err.status_code == status.HTTP_401_UNAUTHORIZED:
            return None
        raise


def _render(request: Request, template: str, caller: Caller, **extra: Any) -> HTMLResponse:
    root = request.scope.get("root_path", "") or ""
    context = {
        "user": caller.name,
        "roles": sorted(caller.principal.roles),
        "app_base": root,
        "api_base": f"{root}/api/v1",
        "airflow_base": _airflow_base(request),
        "static_base": f"{root}/ui/static",
        "version": __version__,
        # The pages read the words they show (states, channels) from here, not a copy of their own.
        "vocabulary": vocabulary.for_pages(),
        **extra,
    }
    html = _templates().get_template(template).render(**context)
    return HTMLResponse(html, headers=SECURITY_HEADERS)


async def _page(request: Request, template: str, **extra: Any) -> Response:
    """``template`` rendered for the user of the cookie; without a valid one, Airflow's login."""
    caller = await _page_caller(request)
    if caller is None:
        return _login_redirect(request)
    return _render(request, template, caller, **extra)


@router.get("")
async def ui_root(request: Request) -> RedirectResponse:
    """``/hitl/ui`` -> ``/hitl/ui/`` (relative links in the pages assume the slash)."""
    return RedirectResponse(f"{request.scope.get('root_path', '')}/ui/", status_code=status.HTTP_307_TEMPORARY_REDIRECT)


@router.get("/", response_class=HTMLResponse)
async def inbox(request: Request) -> Response:
    """The inbox: pending approvals the user can see, with the decision modal and bulk actions."""
    return await _page(request, "inbox.html", page="inbox")


@router.get("/history", response_class=HTMLResponse)
async def history(request: Request) -> Response:
    """Decided approvals as a timeline, with filters and the CSV export."""
    return await _page(request, "history.html", page="history")


@router.get("/delegations", response_class=HTMLResponse)
async def delegations_page(request: Request) -> Response:
    """Delegations: the user's own (given and received), a form to create one, and ending one."""
    caller = await _page_caller(request)
    if caller is None:
        return _login_redirect(request)
    return _render(request, "delegations.html", caller, page="delegations", admin=is_admin(caller.user))


@router.get("/standing", response_class=HTMLResponse)
async def standing_page(request: Request) -> Response:
    """Standing approvals: the user's own (admins: everyone's), a form to approve ahead, and revoking one."""
    caller = await _page_caller(request)
    if caller is None:
        return _login_redirect(request)
    return _render(
        request,
        "standing.html",
        caller,
        page="standing",
        admin=is_admin(caller.user),
        # The page offers the server's words and limit, not copies of its own.
        standing_states=STANDING_STATES,
        max_days=HitlSettings.load().standing_approval_max_days,
    )


@router.get("/analytics", response_class=HTMLResponse)
async def analytics_page(request: Request) -> Response:
    """Analytics: time to decision, daily volume, the gates' and approvers' tables, SLA breaches, the oldest waiting."""
    return await _page(request, "analytics.html", page="analytics", chart_script=CHART_SCRIPT)


@router.get("/task", response_class=HTMLResponse)
async def task_view(
    request: Request,
    dag_id: str = "",
    run_id: str = "",
    task_id: str = "",
    map_index: str = "-1",
) -> Response:
    """The approval of one task instance (the ``task_instance`` external view of the Airflow UI)."""
    # The Airflow UI substitutes {MAP_INDEX} with -1 for unmapped tasks; anything else
    # that is not an integer means "whatever index", left for the script to ignore.
    index = map_index if map_index.lstrip("-").isdigit() else ""
    return await _page(
        request, "task.html", page="task", dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=index
    )


def _listed(folder: Traversable, prefix: str = "") -> Iterator[str]:
    """The files under ``folder`` as ``/``-separated paths (hidden files and folders left out)."""
    for node in folder.iterdir():
        if node.name.startswith("."):
            continue
        if node.is_file():
            yield prefix + node.name
        elif node.is_dir():
            yield from _listed(node, f"{prefix}{node.name}/")


@lru_cache(maxsize=1)
def _static_names() -> frozenset[str]:
    """The files the package ships in its static folder (and its ``vendor/`` subfolders), listed once."""
    return frozenset(_listed(resources.files(_STATIC_PACKAGE).joinpath("static")))


def _static_file(name: str) -> bytes | None:
    # Only a name the folder lists: a path parameter never reaches the filesystem, so a
    # traversal, or a name too long for the filesystem (an OSError: it was a 500), is a 404.
    if name not in _static_names():
        return None
    node = resources.files(_STATIC_PACKAGE).joinpath("static")
    for part in name.split("/"):
        node = node.joinpath(part)
    return node.read_bytes()


@router.get("/static/{name:path}")
async def static(name: str) -> Response:
    """The pages' script, stylesheet and icon, shipped as package data (no CDN: offline machines)."""
    data = _static_file(name)
    if data is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    suffix = name[name.rfind(".") :] if "." in name else ""
    media_type = _STATIC_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    # Versioned by the package: the query string ?v=<version> changes on upgrade.
    return Response(
        data,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


# ---------------------------------------------------------------------------- decisions from the pages


decisions = APIRouter(prefix="/api/approvals", dependencies=[Depends(require_same_site)])


def _answer(approval: Approval) -> JSONResponse:
    return JSONResponse(approval.to_dict())


@decisions.post("/{approval_id}/approve")
def approve(approval_id: str, body: ApproveBody, request: Request, caller: CallerDep, manager: ManagerDep) -> Response:
    """Approve from a page (recorded with source ``ui``)."""
    decision = body_decision(caller, Action.APPROVE, body, source=Source.UI, request=request)
    return _answer(manager.decide(canonical_approval_id(approval_id), decision))


@decisions.post("/{approval_id}/reject")
def reject(approval_id: str, body: RejectBody, request: Request, caller: CallerDep, manager: ManagerDep) -> Response:
    """Reject from a page (a reason is required; recorded with source ``ui``)."""
    decision = body_decision(caller, Action.REJECT, body, source=Source.UI, request=request)
    return _answer(manager.decide(canonical_approval_id(approval_id), decision))


@decisions.post("/bulk")
def bulk(body: BulkBody, request: Request, caller: CallerDep, manager: ManagerDep) -> Response:
    """Approve or reject many requests from the inbox; one result per id (source ``bulk``)."""
    if body.action not in VOTES:
        raise InvalidInput("action", "the pages only approve or reject")
    return JSONResponse(decide_many(body, caller=caller, manager=manager, client=client_of(request)))


router.include_router(decisions)
