"""FastAPI application factory of the ``/hitl`` sub-app.

The plugin mounts this app on Airflow's api-server at ``/hitl``; the REST API lives under
``/hitl/api/v1`` and the app serves its own OpenAPI document (``/hitl/openapi.json``,
``/hitl/docs``). A mounted sub-app inherits no authentication from Airflow: every route of
the API depends on :func:`airflow_hitl.api.security.current_caller`.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from airflow_hitl import __version__
from airflow_hitl.api.limits import BodyLimitMiddleware
from airflow_hitl.exceptions import (
    ConfigInvalid,
    HitlError,
    InvalidInput,
    NotAllowed,
    StoreError,
    StoreOutcomeUnknown,
    StoreUnavailable,
)
from airflow_hitl.settings import HitlSettings, check_options
from airflow_hitl.version_compat import AIRFLOW_V_3_3_PLUS

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


#: At most this many field errors in one 422; the rest are counted in a last entry.
MAX_ERRORS = 20
#: Longest text of an error (a message, a ``loc`` part, a ``ctx`` value) echoed in a 422.
MAX_ERROR_TEXT = 500


async def _hitl_error(request: Request, exc: Exception) -> JSONResponse:
    # Domain errors carry their HTTP status; NotAllowed's reason is the 403's detail.
    assert isinstance(exc, HitlError)
    detail = exc.reason if isinstance(exc, NotAllowed) else str(exc)
    if isinstance(exc, StoreError):
        return await _store_unavailable(request, exc)
    if isinstance(exc, ConfigInvalid):
        # The operator needs the option and its value (logged); the caller can only wait.
        log.error("airflow-hitl is misconfigured: %s", exc)
        options = ", ".join(f"[hitl] {name}" for name in exc.options)
        detail = f"airflow-hitl is misconfigured ({options}); the api-server's log says how"
    if isinstance(exc, InvalidInput) and all(field.startswith("inputs.") for field, _ in exc.problems):
        # Form inputs answer in FastAPI's own 422 shape, one entry per field, so a client (the
        # decision modal) can put each message next to its input.
        return JSONResponse(status_code=exc.status_code, content={"detail": input_errors(exc)})
    return JSONResponse(status_code=exc.status_code, content={"detail": detail})


def input_errors(exc: InvalidInput) -> list[dict[str, Any]]:
    """``exc``'s problems with form inputs as FastAPI-style field errors (``loc`` ends with the input)."""
    errors = []
    for field, message in exc.problems:
        name = field.removeprefix("inputs.")
        errors.append({"loc": ["body", "inputs", name], "msg": f"{name}: {message}", "type": "value_error"})
    return capped_errors(errors)


def _clipped(value: Any) -> Any:
    """``value`` with every text in it cut to :data:`MAX_ERROR_TEXT` characters (lists and dicts walked)."""
    if isinstance(value, str):
        return value if len(value) <= MAX_ERROR_TEXT else value[:MAX_ERROR_TEXT] + "…"
    if isinstance(value, (list, tuple)):
        return [_clipped(v) for v in value[:MAX_ERRORS]]
    if isinstance(value, dict):
        return {_clipped(str(k)): _clipped(v) for k, v in list(value.items())[:MAX_ERRORS]}
    return value


def capped_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most :data:`MAX_ERRORS` field errors, their texts clipped, and one last entry counting the rest.

    A body of 80,000 unknown fields is 80,000 errors: answered in full it was a 6.6 MB 422.
    """
    shown = [_clipped(error) for error in errors[:MAX_ERRORS]]
    left_out = len(errors) - len(shown)
    if left_out > 0:
        shown.append(
            {
                "loc": ["body"],
                "msg": f"{left_out} more error{'s' if left_out > 1 else ''} not shown",
                "type": "too_many_errors",
            }
        )
    return shown


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 with ``Retry-After``; the detail says whether anything may have changed.

    Also installed for SQLAlchemy's connection, statement-timeout and pool-timeout errors
    raised by reads, which go straight to the store and change nothing either.
    """
    log.error("approval store unavailable on %s %s: %s", request.method, request.url.path, exc)
    if isinstance(exc, StoreOutcomeUnknown):
        detail = (
            "the approval store stopped answering while recording this change: it may or may not have been "
            "applied; read the request again before retrying"
        )
    elif isinstance(exc, StoreError) and not isinstance(exc, StoreUnavailable):
        # Misconfiguration (connection type, schema behind): the operator needs the reason.
        detail = f"{exc}; nothing was changed"
    else:
        detail = "the approval store is unavailable; nothing was changed, retry later"
    return JSONResponse(
        status_code=503,
        content={"detail": detail},
        headers={"Retry-After": str(StoreUnavailable.retry_after)},
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI validates the body before any dependency runs, so a request with a broken
    # body and no token would get a 422 that tells an anonymous caller about our schema.
    # Authenticate first: without a valid token the answer is 401, as for any other call.
    assert isinstance(exc, RequestValidationError)
    path = request.url.path.removeprefix(request.scope.get("root_path", ""))
    if path.startswith(API_PREFIX):
        from airflow_hitl.api.security import authenticate, bearer_credentials

        try:
            await authenticate(request, await bearer_credentials(request))
        except HTTPException as auth_error:
            return JSONResponse(
                status_code=auth_error.status_code,
                content={"detail": auth_error.detail},
                headers=dict(auth_error.headers or {}),
            )
    # The offending ``input`` is not echoed: it can be huge, or not JSON at all (NaN); nor more
    # than MAX_ERRORS errors, each clipped.
    errors = exc.errors()
    shown = [{k: v for k, v in error.items() if k != "input"} for error in errors[:MAX_ERRORS]]
    encoded = jsonable_encoder(shown, custom_encoder={Exception: str})
    return JSONResponse(status_code=422, content={"detail": capped_errors([*encoded, *errors[MAX_ERRORS:]])})


def freeze_startup_heap() -> bool:
    """Keep what this api-server worker built at startup out of full collections (``[hitl] api_server_gc_freeze``).

    Called once per worker process, as it starts serving. Garbage made so far is collected
    first, so nothing frozen is garbage; True when the heap was frozen.
    """
    if not HitlSettings.load().api_server_gc_freeze:
        return False
    gc.collect()
    gc.freeze()
    return True


@asynccontextmanager
async def _drainer_lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Airflow 3.3's api-server enters the lifespans of mounted plugin apps (its own lifespan
    # walks its mounts); no other Airflow process serves this app, so the outbox drainer
    # starts in api-servers only, one per api-server worker process, and they share the work.
    from airflow_hitl.api.deadlines import ensure_deadline_worker_started, stop_deadline_worker
    from airflow_hitl.api.gate_closer import ensure_gate_closer_started, stop_gate_closer
    from airflow_hitl.api.parked import move_backstop
    from airflow_hitl.api.standing_applier import ensure_standing_applier_started, stop_standing_applier
    from airflow_hitl.notifications.drainer import ensure_drainer_started, stop_drainer

    app.state.hitl_lifespan = True
    # A misspelt [hitl] option stops the api-server's start, naming it, before anything runs on it.
    check_options()
    ensure_drainer_started()
    ensure_gate_closer_started()
    # An escalated gate parked in awaiting_input (Airflow 3.3+): its backstop moves at once.
    ensure_deadline_worker_started(on_applied=move_backstop)
    ensure_standing_applier_started()
    freeze_startup_heap()
    try:
        yield
    finally:
        stop_standing_applier()
        stop_deadline_worker()
        stop_gate_closer()
        stop_drainer()


async def _start_drainer_lazily(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    # Where the api-server may not run mounted apps' lifespans (before Airflow 3.3), start
    # on the first request instead: only an api-server ever serves one.
    if not getattr(request.app.state, "hitl_lifespan", False):
        from airflow_hitl.api.deadlines import ensure_deadline_worker_started
        from airflow_hitl.api.gate_closer import ensure_gate_closer_started
        from airflow_hitl.api.parked import move_backstop
        from airflow_hitl.api.standing_applier import ensure_standing_applier_started
        from airflow_hitl.notifications.drainer import ensure_drainer_started

        try:
            check_options()
        except ConfigInvalid as err:
            # Nothing starts, and every request says so, until the option is fixed.
            return await _hitl_error(request, err)
        request.app.state.hitl_lifespan = True
        ensure_drainer_started()
        ensure_gate_closer_started()
        ensure_deadline_worker_started(on_applied=move_backstop)
        ensure_standing_applier_started()
        freeze_startup_heap()
    return await call_next(request)


def create_app(*, outbox_drainer: bool = False) -> FastAPI:
    """Build the ``/hitl`` app with the approvals REST API under ``/api/v1``.

    :param outbox_drainer: Run the api-server's background services while the app serves
        (the plugin's app in the api-server): the notification outbox drainer and the gate
        closer (``[hitl] outbox_drainer`` and ``[hitl] gate_closer`` can still turn each off).
    """
    from airflow_hitl.api.routes.analytics import router as analytics_router
    from airflow_hitl.api.routes.approvals import router as approvals_router
    from airflow_hitl.api.routes.delegations import router as delegations_router
    from airflow_hitl.api.routes.evidence import router as evidence_router
    from airflow_hitl.api.routes.notifications import router as notifications_router
    from airflow_hitl.api.routes.standing import router as standing_router
    from airflow_hitl.api.routes.ui import router as ui_router

    app = FastAPI(
        lifespan=_drainer_lifespan if outbox_drainer else None,
        title="airflow-hitl",
        version=__version__,
        description=(
            "Human approval gates for Apache Airflow 3. Authenticate with a bearer token from the "
            "api-server's `POST /auth/token` (or the Airflow UI's session cookie). Reading needs read "
            "access to the approval's DAG; deciding and cancelling need edit access to it and must "
            "pass the request's own policy."
        ),
    )
    if outbox_drainer and not AIRFLOW_V_3_3_PLUS:
        app.middleware("http")(_start_drainer_lazily)
    app.add_exception_handler(HitlError, _hitl_error)
    for store_error in (OperationalError, InterfaceError, SQLAlchemyTimeoutError):
        app.add_exception_handler(store_error, _store_unavailable)
    # Runs before routing and authentication: an oversized or unparsable body costs nothing more.
    app.add_middleware(BodyLimitMiddleware)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(approvals_router, prefix=API_PREFIX)
    app.include_router(notifications_router, prefix=API_PREFIX)
    app.include_router(delegations_router, prefix=API_PREFIX)
    app.include_router(standing_router, prefix=API_PREFIX)
    app.include_router(analytics_router, prefix=API_PREFIX)
    # Signed evidence; its JWKS is the one route of the API that needs no token (public keys).
    app.include_router(evidence_router, prefix=API_PREFIX)
    # The Approvals pages (/hitl/ui/...), embedded in the Airflow UI through external_views.
    app.include_router(ui_router)

    # Signed email links (/hitl/links?token=...) and Slack buttons (/hitl/slack/interactions) carry
    # their own credentials (a signed token, Slack's signature) instead of an Airflow login.
    from airflow_hitl.api.routes.links import redact_tokens_in_access_logs
    from airflow_hitl.api.routes.links import router as links_router
    from airflow_hitl.api.routes.slack import router as slack_router

    redact_tokens_in_access_logs()
    app.include_router(links_router)
    app.include_router(slack_router)

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
