"""Signed evidence: ``/api/v1/approvals/{id}/evidence``, ``/api/v1/evidence`` and its JWKS.

Thin handlers over :mod:`airflow_hitl.evidence`: a request's evidence needs read access to its
DAG, as the request itself does (``GET /approvals/{id}``); a run's evidence lists only gates on
DAGs the caller may read. The keys are read from ``[hitl]`` on every call, so a rotated key is
used at once; without one the answer is 503 naming ``evidence_signing_key``.

``/evidence/jwks.json`` answers without a token. It holds public keys only, and it is what an
auditor outside Airflow (no account, a script, a verifier in another organisation) checks
evidence with; asking for an Airflow login there would make offline verification depend on the
server it is meant not to trust. It is the usual place of a JWKS (an OpenID provider's
``jwks_uri`` is public too).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import AfterValidator

from airflow_hitl.api.datamodels import (
    EvidenceResponse,
    JwksResponse,
    RunEvidenceResponse,
    error_responses,
)
from airflow_hitl.api.deps import ManagerDep, Offset, canonical_approval_id
from airflow_hitl.api.security import CallerDep, require_read
from airflow_hitl.evidence import SIGNING_KEY_OPTION, EvidenceKeys, sign_evidence
from airflow_hitl.limits import text_problem
from airflow_hitl.manager import ApprovalFilter

router = APIRouter(tags=["evidence"])

#: Gates of one run signed per call at most (each reads its audit events and signs once).
MAX_RUN_LIMIT = 500


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    # Besides the store being away, a 503 here may say the server has no evidence key.
    responses = error_responses(*codes, 503)
    responses[503] = {
        **responses[503],
        "description": f"No usable `[hitl] {SIGNING_KEY_OPTION}` (`detail` names the option and what is wrong "
        "with it), or the approval store is unavailable (retry after `Retry-After` seconds).",
    }
    return responses


def _storable(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


RunKey = Annotated[str, Query(min_length=1, max_length=250), AfterValidator(_storable)]


@router.get(
    "/approvals/{approval_id}/evidence",
    response_model=EvidenceResponse,
    summary="A request's signed evidence (compact JWS)",
    responses=_errors(401, 403, 404, 422),
)
def approval_evidence(approval_id: str, caller: CallerDep, manager: ManagerDep) -> Response:
    """The request, its votes and audit events, signed with ``[hitl] evidence_signing_key``."""
    approval = manager.queries.get(canonical_approval_id(approval_id))
    require_read(caller, approval.dag_id)
    return JSONResponse({"jws": sign_evidence(manager, approval, keys=EvidenceKeys.load())})


@router.get(
    "/evidence",
    response_model=RunEvidenceResponse,
    summary="The signed evidence of every gate of a DAG run",
    responses=_errors(401, 422),
)
def run_evidence(
    caller: CallerDep,
    manager: ManagerDep,
    dag_id: RunKey,
    run_id: RunKey,
    limit: Annotated[int, Query(ge=0, le=MAX_RUN_LIMIT, description=f"Page size, 0 to {MAX_RUN_LIMIT}.")] = 100,
    offset: Offset = 0,
) -> Response:
    """Each gate of the run, in the order they opened; none when the caller may not read the DAG."""
    keys = EvidenceKeys.load()
    if not caller.can_read_dag(dag_id):
        # As the lists of approvals do: what the caller may not read is not there for them.
        return JSONResponse({"evidence": [], "total_entries": 0})
    approvals, total = manager.queries.list(
        ApprovalFilter(dag_id=dag_id, run_id=run_id), limit=limit, offset=offset, order_by="requested_at"
    )
    evidence = [{"approval_id": a.id, "jws": sign_evidence(manager, a, keys=keys)} for a in approvals]
    return JSONResponse({"evidence": evidence, "total_entries": total})


@router.get(
    "/evidence/jwks.json",
    response_model=JwksResponse,
    summary="The public keys that verify evidence (JWKS; no token needed)",
    responses=_errors(),
)
def jwks() -> Response:
    """The signing key's public half and ``[hitl] evidence_previous_public_keys``, as a JWKS."""
    return JSONResponse(EvidenceKeys.load().jwks())
