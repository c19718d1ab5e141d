"""Request and response bodies of the ``/hitl/api/v1`` REST API (snake_case, like Airflow's).

Every request body forbids unknown fields, so a typo or an attempt to choose the acting
user (``user_id``, ``decided_by``) is a 422 instead of being silently ignored: identity only
ever comes from the Airflow token.

Free text (``comment``, ``reason``) is limited to ``[hitl] max_comment_length`` characters
(default 4000), read when a body is validated (and when the OpenAPI document is built), never
at import; longer text is a 422.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from airflow_hitl.forms import MAX_NAME_LENGTH
from airflow_hitl.limits import INT32_MAX, MAX_TIMEOUT_SECONDS, json_problem
from airflow_hitl.settings import conf_getint
from airflow_hitl.standing import MAX_USES as MAX_STANDING_USES

# A bulk call decides one request per transaction; a bound keeps one call from holding a
# worker thread for minutes.
MAX_BULK_IDS = 500
MAX_ID_LENGTH = 64


_TEXT_HELP = "At most `[hitl] max_comment_length` characters (4000 unless configured)."
_JSON_HELP = "A JSON object within `[hitl] max_json_bytes` and `[hitl] max_json_depth`."


def _limit(name: str) -> int:
    # Read when a body is validated, never at import: tests and deployments change them. One
    # option at a time: loading all of HitlSettings is ~20 config reads, on every decision.
    return conf_getint(name)


class StorableBody(BaseModel):
    """Base of every request body: unknown fields are refused, every value must be storable."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # Python's JSON parser accepts NaN and lone surrogates (\ud800); PostgreSQL refuses
        # them, and NUL in text. Refuse all of them here as bad input (422), not later as a 500,
        # field by field so that the error names the field that holds the value.
        problem = json_problem(data)
        if problem:
            raise ValueError(problem)
        return data


class _Body(StorableBody):
    """Base of the approvals' request bodies: text is stripped of surrounding white space too."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _Response(BaseModel):
    """Base of response bodies."""

    model_config = ConfigDict(extra="ignore")


def _within_comment_limit(value: str) -> str:
    limit = _limit("max_comment_length")
    if len(value) > limit:
        raise ValueError(f"must be at most {limit} characters (`[hitl] max_comment_length`)")
    return value


class _CommentLimitSchema:
    """Documents the configured ``max_comment_length`` as ``maxLength`` when the schema is built."""

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["maxLength"] = _limit("max_comment_length")
        return json_schema


#: Free text with a decision: at most ``[hitl] max_comment_length`` characters.
Text = Annotated[str, AfterValidator(_within_comment_limit), _CommentLimitSchema()]


def _blank_to_none(value: str | None) -> str | None:
    return value or None


def _not_blank(value: str) -> str:
    # Whitespace is stripped first, so "   " arrives here as "".
    if not value:
        raise ValueError("must not be blank")
    return value


def _bounded_json(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    problem = json_problem(value, max_depth=_limit("max_json_depth"), max_bytes=_limit("max_json_bytes"))
    if problem:
        raise ValueError(problem)
    return value


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=250)]
Names = Annotated[list[Name], Field(default_factory=list, max_length=1000)]
# Whole seconds of a gate; ``now + timeout`` must stay a time the store can represent.
TimeoutSeconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1, le=INT32_MAX)]
RequiredText = Annotated[Text, Field(description=f"Required. {_TEXT_HELP}")]
_DIGEST_HELP = (
    "The request's `content_digest` as you were shown it. If the request changed since (an escalation, "
    "another form), the answer is 409 and nothing is recorded. Omitted: not checked."
)
#: A request's ``content_digest``: SHA-256 in hex (upper case is read as lower case).
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]
ContentDigest = Annotated[Digest | None, Field(description=_DIGEST_HELP)]
#: The delegator whose vote the caller casts (see "Delegation" in the README).
OnBehalfOf = Annotated[
    Name | None,
    Field(
        description="Cast this delegator's vote through an active delegation to you. Omitted: your own vote "
        "if the policy allows it, else the one delegator it allows (409 when several do)."
    ),
]


class ApproveBody(_Body):
    """Body of ``POST /approvals/{id}/approve``."""

    comment: Text | None = Field(default=None, description=_TEXT_HELP)
    metadata: dict[str, Any] | None = Field(default=None, description=f"Recorded with the vote. {_JSON_HELP}")
    on_behalf_of: OnBehalfOf = None
    inputs: dict[str, Any] | None = Field(
        default=None,
        description="Values for the request's form inputs (its `inputs`): required ones must be given, defaults "
        "fill the rest. A value the input's schema refuses, or an unknown name, is a 422 naming the field "
        f"(`loc` ends with the input's name). {_JSON_HELP}",
    )
    content_digest: ContentDigest = None

    _clean_comment = field_validator("comment")(_blank_to_none)
    _bounded = field_validator("metadata", "inputs")(_bounded_json)


class RejectBody(_Body):
    """Body of ``POST /approvals/{id}/reject``: a reason is required."""

    reason: RequiredText
    comment: Text | None = Field(default=None, description=_TEXT_HELP)
    on_behalf_of: OnBehalfOf = None
    inputs: dict[str, Any] | None = Field(
        default=None,
        description="Values for some of the request's form inputs, kept with the rejection (say, the ticket that "
        "explains why): none is required and defaults are not filled in; a value the input's schema refuses, or an "
        f"unknown name, is a 422 naming the field. {_JSON_HELP}",
    )
    content_digest: ContentDigest = None

    _clean_comment = field_validator("comment")(_blank_to_none)
    _reason_given = field_validator("reason")(_not_blank)
    _bounded = field_validator("inputs")(_bounded_json)


class CancelBody(_Body):
    """Body of ``POST /approvals/{id}/cancel``: a reason is required."""

    reason: RequiredText

    _reason_given = field_validator("reason")(_not_blank)


class BulkBody(_Body):
    """Body of ``POST /approvals/bulk``: one action applied to many requests."""

    ids: list[Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH)]] = Field(
        min_length=1, max_length=MAX_BULK_IDS, description="Approval request ids."
    )
    action: Literal["approve", "reject", "cancel"]
    comment: Text | None = Field(default=None, description=_TEXT_HELP)
    reason: Text | None = Field(default=None, description=f"Required to reject or cancel. {_TEXT_HELP}")
    content_digests: dict[Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH)], Digest] | None = Field(
        default=None,
        max_length=MAX_BULK_IDS,
        description="Per id, the `content_digest` you were shown: an id whose request changed since gets 409 in "
        "its result and nothing is recorded for it. An id left out is not checked. Not with `cancel`.",
    )

    _clean_comment = field_validator("comment", "reason")(_blank_to_none)

    @model_validator(mode="after")
    def _reason_when_needed(self) -> BulkBody:
        if self.action in ("reject", "cancel") and not self.reason:
            raise ValueError(f"`reason` is required to {self.action}")
        if self.content_digests:
            # A digest that is not checked would only look like a safeguard.
            if self.action == "cancel":
                raise ValueError("`content_digests` go with approve or reject; a cancel is not checked against one")
            unknown = sorted(set(self.content_digests) - set(self.ids))[:5]
            if unknown:
                raise ValueError(f"`content_digests` names ids that are not in `ids`: {unknown}")
        return self


class EscalationBody(_Body):
    """One escalation level of a request opened over the API."""

    approvers: Names
    roles: Names
    timeout_seconds: TimeoutSeconds
    required_approvals: Count | None = None


#: At most this many form inputs on a request opened over the API.
MAX_INPUTS = 100
InputName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH)]


class InputBody(StorableBody):
    """One form input of ``POST /approvals``, in the shape an item's ``inputs`` show it.

    ``value`` is the default an approval that leaves the input out gets; an input without one
    (``value`` left out, or ``required: true``) must be given to approve. The stored form is
    validated like a DAG's ``Param``: the schema must be JSON Schema, the default must satisfy it.
    """

    # ``schema`` is a (deprecated) method of pydantic's BaseModel: the field takes it as alias.
    json_schema: dict[str, Any] = Field(
        default_factory=dict, alias="schema", description="JSON Schema the value must satisfy; `{}` accepts any."
    )
    description: str | None = Field(default=None, max_length=2000)
    value: Any = Field(default=None, description="The default. Leave it out for an input every approval must give.")
    required: bool | None = Field(
        default=None, description="Optional: `true` with no `value`, or `false` with a default the schema accepts."
    )

    _bounded = field_validator("json_schema")(_bounded_json)

    def stored(self) -> dict[str, Any]:
        """The input as :mod:`airflow_hitl.forms` reads a stored form; it checks ``value`` against ``required``."""
        form: dict[str, Any] = {"schema": self.json_schema, "description": self.description}
        form.update((name, getattr(self, name)) for name in ("value", "required") if name in self.model_fields_set)
        return form


class CreateBody(_Body):
    """Body of ``POST /approvals``: a gate opened from outside a task.

    ``requested_by`` is the authenticated caller; it cannot be set in the body.
    """

    dag_id: str = Field(max_length=250)
    title: str = Field(max_length=500)
    run_id: str | None = Field(default=None, max_length=250)
    task_id: str | None = Field(default=None, max_length=250)
    map_index: int = Field(default=-1, ge=-1, le=INT32_MAX)
    description: str | None = Field(default=None, max_length=20_000)
    reason: Text | None = None
    context: dict[str, Any] = Field(default_factory=dict, description=f"Facts shown to approvers. {_JSON_HELP}")
    timeout_seconds: TimeoutSeconds | None = None
    timeout_action: Literal["approve", "reject", "escalate"] | None = None
    sla_seconds: TimeoutSeconds | None = Field(
        default=None,
        description="How long a decision should take: past it the approvers are told it is overdue and it is "
        "recorded; the request keeps waiting. Shorter than `timeout_seconds` when both are given.",
    )
    escalate_to: list[EscalationBody] = Field(default_factory=list, max_length=20)
    escalation_final_action: Literal["approve", "reject"] | None = None
    required_approvals: Count = 1
    require_all: bool = False
    allowed_approvers: Names
    allowed_roles: Names
    allow_self_approval: bool = False
    on_reject: Literal["fail", "skip"] = "fail"
    metadata: dict[str, Any] = Field(default_factory=dict, description=_JSON_HELP)
    inputs: dict[InputName, InputBody] = Field(
        default_factory=dict,
        max_length=MAX_INPUTS,
        description="A form approvers fill in with their decision: input name (a Python identifier) -> its "
        "`schema`, `description` and default `value`, as the request's items show them.",
    )

    _required = field_validator("dag_id", "title")(_not_blank)
    _bounded = field_validator("context", "metadata")(_bounded_json)

    @field_validator("inputs")
    @classmethod
    def _bounded_form(cls, value: dict[str, InputBody]) -> dict[str, InputBody]:
        # Each schema is bounded; the whole form is stored as one JSON value, so it is too.
        _bounded_json({name: spec.stored() for name, spec in value.items()})
        return value


class VoteResponse(_Response):
    """One person's vote on a request."""

    user: str
    vote: str
    comment: str | None = None
    reason: str | None = None
    source: str
    escalation_level: int
    created_at: dt.datetime
    user_roles: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    delegate: str | None = Field(default=None, description="Who cast this vote for `user` through a delegation.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="The form inputs this voter submitted.")
    content_digest: str | None = Field(
        default=None,
        description="The request's `content_digest` when this vote was cast: what the voter decided on. "
        "Null for votes recorded before digests.",
    )


class NoticeResponse(_Response):
    """One notice about a request to one recipient on one channel, and how its delivery went."""

    channel: str
    recipient: str
    event_type: str
    status: str = Field(description="pending, sent, failed (with error) or read")
    error: str | None = None
    retry_count: int
    sent_at: dt.datetime | None = None
    created_at: dt.datetime | None = None


class ApprovalResponse(_Response):
    """An approval request with its votes.

    ``can_approve`` and ``can_approve_reason`` are filled on the pending list and the single
    item: whether the caller may approve now (edit access to the DAG and the request's own
    policy), and if not, why.
    """

    id: str
    dag_id: str
    run_id: str | None = None
    task_id: str | None = None
    map_index: int
    try_number: int | None = None
    origin: Literal["task", "api"] = Field(
        description="`task`: the gate of that task instance's try. `api`: opened over the REST API; it never "
        "stands for a task's gate, whatever dag, run and task ids it names."
    )
    title: str
    description: str | None = None
    reason: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    approval_type: str
    state: str
    requested_by: str | None = None
    requested_at: dt.datetime
    expires_at: dt.datetime | None = None
    timeout_action: str | None = None
    escalation_level: int
    escalation_targets: list[dict[str, Any]] = Field(default_factory=list)
    escalation_final_action: str | None = None
    required_approvals: int
    require_all: bool
    approvals_needed: int
    approvers: list[str] = Field(default_factory=list, description="Users whose approvals count now.")
    allowed_approvers: list[str] = Field(default_factory=list)
    allowed_roles: list[str] = Field(default_factory=list)
    allow_self_approval: bool
    on_reject: str
    votes: list[VoteResponse] = Field(default_factory=list)
    decided_by: str | None = None
    decided_at: dt.datetime | None = None
    decision: str | None = None
    decision_source: str | None = None
    comment: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="The form approvers fill in: input name -> `value` (the default), `schema` (JSON Schema), "
        "`description` and `required` (no default: an approval must give it).",
    )
    content_digest: str = Field(
        description="SHA-256 (hex) of the RFC 8785 canonical JSON of what approvers are shown: the object of this "
        "item's `title`, `description`, `reason`, `context`, `inputs`, `allowed_approvers`, `allowed_roles`, "
        "`required_approvals` and `require_all`, plus `bound` when not empty. Send it with a decision to decide "
        "only what you saw."
    )
    distinct_from: list[str] = Field(
        default_factory=list,
        description="Task ids of gates of the same DAG run: whoever voted on one of them (any map index, any try; "
        "a delegate's vote counts for both people) may not vote on this request (403).",
    )
    bound: dict[str, str] = Field(
        default_factory=dict,
        description="Approve exactly this artifact: the gate's rendered `bind` values (name -> text). Part of "
        "`content_digest` when not empty; the decision carries each value's SHA-256 under `bound`.",
    )
    sla_seconds: float | None = Field(
        default=None,
        description="How long a decision should take (the gate's `sla`), in seconds; null: no SLA. Not a timeout.",
    )
    sla_breached_at: dt.datetime | None = Field(
        default=None, description="When the request was found still waiting past its SLA; null: not (yet) overdue."
    )
    created_at: dt.datetime
    updated_at: dt.datetime
    can_approve: bool | None = None
    can_approve_reason: str | None = None
    can_approve_for: str | None = Field(
        default=None, description="When `can_approve` through a delegation: the delegator the caller decides for."
    )
    notices: list[NoticeResponse] | None = Field(
        default=None, description="On the single item: the request's notices and their delivery."
    )


class ApprovalCollectionResponse(_Response):
    """A page of approval requests and how many match in all (Airflow's list shape)."""

    approvals: list[ApprovalResponse]
    total_entries: int


class BulkItemResult(_Response):
    """What happened to one id of a bulk call."""

    id: str
    ok: bool
    status_code: int = Field(description="The status a single call for this id would have answered.")
    state: str | None = Field(default=None, description="The request's state afterwards, when known.")
    detail: str | None = Field(default=None, description="Why it failed.")


class BulkResponse(_Response):
    """One result per id of a bulk call, in the order given."""

    action: str
    results: list[BulkItemResult]
    succeeded: int
    failed: int


class DelegationBody(_Body):
    """Body of ``POST /delegations``: let ``delegate`` decide your approvals for a period."""

    delegate: Name
    starts_at: dt.datetime = Field(description="ISO 8601 with a time zone.")
    ends_at: dt.datetime = Field(description="ISO 8601 with a time zone; after `starts_at`, in the future.")
    dag_ids: list[Name] | None = Field(
        default=None, min_length=1, max_length=1000, description="Only these DAGs; omitted: every DAG."
    )
    delegator: Name | None = Field(default=None, description="Admins only: whose approvals. Omitted: the caller's.")


class DelegationResponse(_Response):
    """A delegation and where it stands now."""

    id: str
    delegator: str
    delegate: str
    starts_at: dt.datetime
    ends_at: dt.datetime
    dag_ids: list[str] | None = Field(default=None, description="null: every DAG.")
    created_by: str
    created_at: dt.datetime
    ended_at: dt.datetime | None = None
    ended_by: str | None = None
    state: Literal["scheduled", "active", "expired", "ended"]


class DelegationCollectionResponse(_Response):
    """A page of delegations and how many match in all."""

    delegations: list[DelegationResponse]
    total_entries: int


class EvidenceResponse(_Response):
    """A request's signed evidence."""

    jws: str = Field(
        description="Compact JWS (alg EdDSA, the key's RFC 7638 thumbprint as `kid`): the request, its policy and "
        "`content_digest`, every vote and the request's audit events with their chain hashes. Verify it with "
        "`/evidence/jwks.json` (`airflow hitl evidence verify`)."
    )


class RunEvidenceItem(_Response):
    """The signed evidence of one gate of a run."""

    approval_id: str
    jws: str


class RunEvidenceResponse(_Response):
    """The evidence of a run's gates (those on DAGs the caller may read), and how many there are in all."""

    evidence: list[RunEvidenceItem]
    total_entries: int


class JwkResponse(_Response):
    """One evidence key's public half as a JWK (RFC 8037)."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str
    kid: str = Field(description="The key's RFC 7638 thumbprint: the `kid` in the header of what it signed.")
    alg: Literal["EdDSA"]
    use: Literal["sig"]


class JwksResponse(_Response):
    """The public evidence keys: the current one first, then earlier ones still listed after a rotation."""

    keys: list[JwkResponse]


class FieldError(_Response):
    """One problem with the input: where (``loc``, ending with the field's name), what, and its kind."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(_Response):
    """Every error answer: ``detail`` says why; for invalid input it lists each problem with its field."""

    detail: str | list[FieldError]


_ERROR_DESCRIPTIONS = {
    401: "No token, or an invalid or expired one.",
    403: "Authenticated but not allowed (the reason is in `detail`).",
    404: "No approval request with this id.",
    409: "The request is no longer pending, the caller has already voted, or the request changed since the "
    "caller saw it (`content_digest`).",
    413: "The body is larger than `[hitl] max_request_bytes`.",
    422: "Invalid input; `detail` names the field.",
    503: "The approval store is unavailable; nothing was changed unless `detail` says the outcome is unknown. "
    "Retry after `Retry-After` seconds.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route answers, each with its body schema."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[code]}
        if code == 503:
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
            }
        responses[code] = entry
    return responses


#: Where a standing approval stands now (``vocabulary.STANDING_STATES``).
StandingState = Literal["scheduled", "active", "expired", "used_up", "revoked"]


class StandingApprovalBody(_Body):
    """Body of ``POST /standing-approvals``: approve ahead the gates of a DAG that open in a window.

    The approver is the caller (the token's user); the body cannot name anyone else.
    """

    dag_id: Name = Field(description="The DAG whose gates it approves; it must exist and you must be able to edit it.")
    task_id: Name | None = Field(default=None, description="Only this task's gates. Omitted or null: every gate.")
    valid_from: dt.datetime | None = Field(
        default=None, description="ISO 8601 with a time zone. Omitted, null or past: now (it never reaches back)."
    )
    valid_until: dt.datetime = Field(
        description="ISO 8601 with a time zone; in the future and at most `[hitl] standing_approval_max_days` "
        "(30 unless configured) after `valid_from`."
    )
    max_uses: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STANDING_USES,
        description="Votes it may cast at most. Omitted or null: no limit within the window.",
    )
    comment: RequiredText = Field(
        description=f"Required: why you approve ahead (recorded with each vote). {_TEXT_HELP}"
    )

    _comment_given = field_validator("comment")(_not_blank)


class StandingApprovalResponse(_Response):
    """A standing approval and where it stands now."""

    id: str
    approver: str = Field(description="Whose vote it casts: the user who created it.")
    dag_id: str
    task_id: str | None = Field(default=None, description="null: every gate of the DAG.")
    valid_from: dt.datetime
    valid_until: dt.datetime
    max_uses: int | None = Field(default=None, description="null: no limit.")
    uses_left: int | None = Field(default=None, description="null: no limit.")
    comment: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None
    revoked_by: str | None = None
    state: StandingState


class StandingApprovalCollectionResponse(_Response):
    """A page of standing approvals and how many match in all."""

    standing_approvals: list[StandingApprovalResponse]
    total_entries: int


class StandingOwedVoteResponse(_Response):
    """A vote a standing approval owed a request (when it opened or escalated), and how it was settled."""

    standing_id: str
    approver: str
    escalation_level: int = Field(description="The level the request was at when the vote was owed.")
    status: Literal["due", "used", "skipped"] = Field(
        description="`due`: not cast yet; `used`: cast (one use spent); `skipped`: refused, `reason` says why."
    )
    reason: str | None = None
    due_at: dt.datetime
    settled_at: dt.datetime | None = None


class StandingOwedVotesResponse(_Response):
    """The votes standing approvals owed one request, oldest first."""

    owed_votes: list[StandingOwedVoteResponse]
    total_entries: int
