"""Schemathesis fuzzes every operation of ``/hitl/openapi.json`` against the real app.

The app is Airflow's own api-server with our plugin mounted at ``/hitl``, authenticated as
``admin`` with a real SimpleAuthManager token, over a PostgreSQL approval store (the
backend that refuses the most input: NUL, lone surrogates, huge numbers). The run is
deterministic (derandomized, bounded examples) and fails on any 5xx, on a status code or
content type the document does not declare, and on a body that breaks its declared schema.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from airflow_hitl.evidence import private_key_pem
from airflow_hitl.manager import ApprovalManager
from airflow_hitl.models.schema import migrate
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.policy import Principal
from airflow_hitl.spec import utcnow
from tests.airflow_api import AirflowApi, open_request

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def fuzz_api(airflow_api: AirflowApi, pg_url: str) -> Iterator[AirflowApi]:
    """The api-server app over a PostgreSQL store holding a few requests to find, signing evidence."""
    store = ApprovalStore(url=pg_url)
    migrate(store)
    manager = ApprovalManager(store=store)
    # A standing approval first: the lists answer a real record, and the requests owe it a vote.
    manager.standing.create(
        actor=Principal.of("admin"),
        dag_id="billing",
        valid_until=utcnow() + dt.timedelta(days=7),
        comment="fuzzed ahead",
        max_uses=2,
    )
    for n in range(3):
        open_request(manager, run_id=f"fuzz__{n}")
    # One decided, so the analytics answer times to decision and an approver, not only nulls.
    decided = open_request(manager, run_id="fuzz__decided")
    manager.reject(decided.id, user=Principal.of("fuzzer", ["op"]), reason="fuzzed")
    airflow_api.hitl_app.state.hitl_manager = manager
    # Without an evidence key the evidence routes rightly answer 503, which the fuzz counts as a failure.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__HITL__EVIDENCE_SIGNING_KEY", private_key_pem(Ed25519PrivateKey.generate()))
        yield airflow_api
    airflow_api.hitl_app.state.hitl_manager = None
    store.dispose()


@functools.cache
def _paths() -> dict[str, Any]:
    # The app's own document, so a new route is fuzzed without editing this file.
    from airflow_hitl.api.app import create_app

    return dict(create_app().openapi()["paths"])


def _takes_no_input(method: str, path: str) -> bool:
    """True for an operation without parameters, body or authentication (the public JWKS)."""
    operation = _paths()[path][method.lower()]
    return not any(operation.get(part) for part in ("parameters", "requestBody", "security"))


def _operations() -> list[Any]:
    """Every operation with valid input, and with invalid input where it takes any input at all.

    An operation that takes nothing (no parameters, body or authentication: the public JWKS)
    has no invalid input to send, so it has no "invalid" case rather than a skipped one.
    """
    paths = _paths()
    return [
        pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path}-{name}")
        for path, methods in sorted(paths.items())
        for method in sorted(methods)
        for mode, name in ((GenerationMode.POSITIVE, "valid"), (GenerationMode.NEGATIVE, "invalid"))
        if mode == GenerationMode.POSITIVE or not _takes_no_input(method, path)
    ]


def _static_segments() -> frozenset[str]:
    # "/approvals/history" is its own route, registered before "/approvals/{approval_id}": an id
    # generated as "history" is routed there by design and answered as a list, not as one
    # approval. Such a case tests the other route, so it is left out (see _routed_as_declared).
    return frozenset(seg for path in _paths() for seg in path.split("/") if seg and not seg.startswith("{"))


STATIC_SEGMENTS = _static_segments()


def _routed_as_declared(case: Any) -> bool:
    """False when a path parameter equals a fixed segment of another route (it would be routed there)."""
    return not any(str(value) in STATIC_SEGMENTS for value in (case.path_parameters or {}).values())


@pytest.fixture(scope="module")
def hitl_schema(fuzz_api: AirflowApi) -> Any:
    """The OpenAPI document as served, requests sent through the whole api-server app."""
    return schemathesis.openapi.from_asgi("/hitl/openapi.json", fuzz_api.app)


@pytest.mark.postgres
@pytest.mark.slow
class TestOpenApiFuzz:
    """Valid and invalid inputs for every operation, as ``admin``."""

    @pytest.mark.parametrize(("method", "path", "mode"), _operations())
    def test_operation(self, hitl_schema: Any, fuzz_api: AirflowApi, method: str, path: str, mode: Any) -> None:
        """No input, however odd, gets a 5xx or an answer the document does not describe."""
        operation = hitl_schema[path][method]
        headers = fuzz_api.headers("admin")

        @given(case=operation.as_strategy(generation_mode=mode).filter(_routed_as_declared))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            phases=[Phase.generate, Phase.shrink],
        )
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        run()
