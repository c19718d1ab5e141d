"""ApprovalOperator: a human approval gate in a DAG.

The task opens an approval request in the store and waits without holding a worker slot:
parked in Airflow's ``awaiting_input`` state on Airflow 3.3+ (no trigger either; the
api-server ends it), deferred to :class:`ApprovalTrigger` on 3.1 and 3.2. It then succeeds,
fails, skips its downstream tasks, or waits again after an escalation, exactly as configured. Every option
is checked when the DAG is parsed, with an error naming the field.

Example::

    from datetime import timedelta
    from airflow_hitl.operators.approval import ApprovalOperator

    gate = ApprovalOperator(
        task_id="approve_release",
        title="Release model {{ params.version }} to production",
        context_from={"metrics": "evaluate"},
        required_approvals=2,
        allowed_roles=["ml-leads"],
        timeout=timedelta(hours=4),
        timeout_action="escalate",
        escalate_to=[{"approvers": ["head-of-ml"], "timeout": timedelta(hours=2)}],
        escalation_final_action="reject",
    )
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_hitl.exceptions import InvalidApprovalConfig
from airflow_hitl.forms import parse_inputs
from airflow_hitl.manager import ApprovalFilter, ApprovalManager, ApprovalSpec, utcnow
from airflow_hitl.operators.options import (
    BRANCH_OUTCOMES,
    ContextSource,
    dag_file_frame,
    distinct_from_problems,
    option_of,
    parse_branches,
    parse_context_from,
    parse_distinct_from,
    parse_escalation,
    parse_notifiers,
    parse_notify,
    raise_at,
)
from airflow_hitl.policy import ConfigProblems, gate_outcome, str_list
from airflow_hitl.records import Approval, decision_summary
from airflow_hitl.seam import parking
from airflow_hitl.settings import HitlSettings
from airflow_hitl.triggers.approval import SKIPMIXIN_KEY, ApprovalTrigger, ApprovalTriggerEventPayload
from airflow_hitl.version_compat import HAS_AWAITING_INPUT, AirflowFailException, AirflowSkipException
from airflow_hitl.vocabulary import (
    Action,
    ApprovalType,
    ApprovalTypeWord,
    Event,
    FinalActionWord,
    OnReject,
    OnRejectWord,
    Source,
    State,
    TaskEnd,
    TimeoutActionWord,
)

if TYPE_CHECKING:
    from types import FrameType

    from airflow.sdk import BaseNotifier, Context


class ApprovalOperator(BaseOperator):
    """Pause the DAG run until the right people approve; fail, skip or escalate otherwise.

    :param title: Headline shown to approvers (templated).
    :param description: Longer text about what is being approved (templated).
    :param reason: Why approval is needed (templated).
    :param context: Facts shown to approvers, e.g. metrics (templated dict).
    :param context_from: Pull upstream XComs into ``context``: ``{"metrics": "evaluate"}`` takes the
        return value of task ``evaluate``; ``{"acc": ("evaluate", "accuracy")}`` takes XCom key
        ``accuracy``; a list of task ids stores each task's return value under its id.
    :param approval_type: ``manual`` (people decide), ``auto`` (approved at once, recorded as such),
        ``conditional`` (``condition(context)`` true approves at once, false waits for people).
    :param condition: The callable for ``approval_type="conditional"``; it receives the context dict.
    :param timeout: How long people have (a ``timedelta``); None waits for ever. Not
        ``execution_timeout``, which would kill the waiting task.
    :param timeout_action: What happens at expiry: ``approve``, ``reject`` or ``escalate``.
    :param sla: How long approvers should take (not a timeout): a gate still waiting then is
        recorded as overdue and its approvers get an ``sla_breached`` notice; it keeps waiting.
        Positive, and shorter than ``timeout`` when both are set.
    :param escalate_to: With ``timeout_action="escalate"``: one or more levels, each a dict or
        :class:`~airflow_hitl.policy.EscalationLevel` with ``approvers`` and/or ``roles``, its own
        ``timeout`` and optionally ``required_approvals``. A list of user names is one level
        that gets ``timeout`` again. Escalation adds approvers; earlier ones may still decide.
    :param escalation_final_action: ``approve`` or ``reject`` when the last level expires.
    :param required_approvals: Distinct allowed approvals that open the gate.
    :param require_all: Every user in ``allowed_approvers`` must approve.
    :param allowed_approvers: Airflow user names who may decide (empty with no roles: anyone
        with edit access to the DAG).
    :param allowed_roles: Auth-manager roles whose members may decide.
    :param allow_self_approval: Let the user who triggered the run approve it (default False).
    :param on_reject: ``fail`` (default) fails the task; ``skip`` skips it and its downstream tasks.
    :param metadata: Free-form dict (environment, model version, ``risk``) kept with the request (templated).
    :param conn_id: Connection of the approval store; default ``[hitl] conn_id``.
    :param poll_interval: Seconds between store polls in the triggerer; default ``[hitl] poll_interval``.
    :param notify_channels: Where to tell people: any of ``email``, ``slack``, ``webhook``, ``in_app``, ``teams``.
        Notices go out when the gate opens, on every ``remind_every``, on escalation, and when it is
        decided, times out or is cancelled: queued in the notification outbox with each transition and sent by
        the api-server (the worker sends the first one at once), never from the triggerer.
    :param notify_users: Airflow user names to tell (default: ``allowed_approvers``).
    :param notify_roles: Roles whose members to tell (default: ``allowed_roles``).
    :param slack_channel: Post to this Slack channel instead of direct messages to each person.
    :param slack_conn_id: Slack API connection; default ``[hitl] notify_slack_conn_id``.
    :param smtp_conn_id: SMTP connection; default ``[hitl] notify_smtp_conn_id``.
    :param webhook_conn_id: HTTP connection of the webhook receiver; default ``[hitl] notify_webhook_conn_id``.
    :param webhook_endpoint: Path appended to the webhook connection's URL.
    :param teams_conn_id: HTTP connection holding the Microsoft Teams Workflows or incoming-webhook URL
        (only with ``notify_channels`` including ``teams``); default ``teams_default``.
    :param notifiers: Airflow notifiers (``BaseNotifier`` instances, e.g. ``SlackNotifier(...)``), called
        with the task's context when the request opens, as Airflow's own HITL operators call theirs,
        beside ``notify_channels``. The context also holds ``approval``: the request as the REST API
        shows it. A notifier that raises is logged naming the gate and the notifier and never fails
        the gate; together they get ``notifier_budget`` seconds, after which the gate waits without them.
    :param remind_every: Remind the approvers this often while the gate waits (a ``timedelta``).
    :param notify_templates: Jinja2 overrides per event (``required``, ``reminder``, ``escalated``,
        ``timed_out``, ``decided``, ``cancelled``), each a dict with any of ``subject``, ``text``, ``html``.
    :param inputs: A form approvers fill in with their decision: input name (an identifier) ->
        Airflow ``Param`` (``Param(10, type="integer", minimum=1, maximum=100)``) or a plain default.
        An input without a default is required to approve; the decision XCom carries the values
        under ``inputs`` (those of the vote that decided) and each vote's under ``votes[].inputs``.
    :param distinct_from: Four eyes across a run: task ids of other approval gates of this DAG.
        Whoever voted (approved or rejected) on one of them in the same DAG run, at any map index
        and any try, may not vote on this gate: every channel refuses them with a 403 naming the
        earlier gate. A delegate's vote counts for both people, the delegate and the one they voted
        for. Each id must be an approval gate of the same DAG: the DAG's import error names a wrong one.
    :param bind: Approve exactly this artifact: name (an identifier) -> a value rendered when the gate
        runs (templated), such as ``"{{ ti.xcom_pull('train')['artifact_sha'] }}"``. Approvers are shown
        the values; they are part of the request's ``content_digest``; the decision XCom carries
        ``bound: {name: SHA-256 of the value}``, and ``airflow_hitl.verify_bound(decision, name, value)``
        lets a later task refuse anything but what was approved (``ApprovalMismatch`` naming the field).
    """

    template_fields: Sequence[str] = ("title", "description", "reason", "context", "metadata", "bind")
    template_fields_renderers = {"context": "json", "metadata": "json", "description": "md"}
    ui_color = "#f6d365"
    #: Seconds the gate's ``notifiers`` get, all together, before it waits (parks or defers) without them.
    notifier_budget: float = 30.0

    def __init__(
        self,
        *,
        title: str,
        description: str | None = None,
        reason: str | None = None,
        context: Mapping[str, Any] | None = None,
        context_from: Mapping[str, ContextSource] | Sequence[str] | None = None,
        approval_type: ApprovalTypeWord | ApprovalType = ApprovalType.MANUAL,
        condition: Callable[[dict[str, Any]], bool] | None = None,
        timeout: dt.timedelta | None = None,
        timeout_action: TimeoutActionWord | Action | None = None,
        sla: dt.timedelta | None = None,
        escalate_to: Any = None,
        escalation_final_action: FinalActionWord | Action | None = None,
        required_approvals: int = 1,
        require_all: bool = False,
        allowed_approvers: Sequence[str] | None = None,
        allowed_roles: Sequence[str] | None = None,
        allow_self_approval: bool = False,
        on_reject: OnRejectWord | OnReject = OnReject.FAIL,
        metadata: Mapping[str, Any] | None = None,
        conn_id: str | None = None,
        poll_interval: float | None = None,
        notify_channels: Sequence[str] | None = None,
        notify_users: Sequence[str] | None = None,
        notify_roles: Sequence[str] | None = None,
        slack_channel: str | None = None,
        slack_conn_id: str | None = None,
        smtp_conn_id: str | None = None,
        webhook_conn_id: str | None = None,
        webhook_endpoint: str | None = None,
        teams_conn_id: str | None = None,
        remind_every: dt.timedelta | None = None,
        notify_templates: Mapping[str, Mapping[str, str]] | None = None,
        inputs: Mapping[str, Any] | None = None,
        distinct_from: Sequence[str] | None = None,
        bind: Mapping[str, str] | None = None,
        notifiers: Sequence[BaseNotifier] | BaseNotifier | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Every option is checked before anything is raised, so one parse names every mistake.
        problems = ConfigProblems()
        if self.execution_timeout is not None:
            problems.add(
                "execution_timeout",
                "is not how long approvers have and would kill the waiting gate; use `timeout` instead",
            )
        if timeout is not None and timeout_action is None:
            timeout_action = Action.REJECT
        # None only on a TaskFlow gate whose function returns its title (see operators/decorators.py).
        self.title: str | None = title
        self.description = description
        self.reason = reason
        self.context = dict(context or {}) if isinstance(context, Mapping) or context is None else context
        self.context_from = problems.parse(parse_context_from, context_from, default={})
        self.approval_type = approval_type
        self.condition = condition
        self.timeout = timeout
        self.timeout_action = timeout_action
        self.sla = sla
        self.escalate_to = problems.parse(parse_escalation, escalate_to, timeout, default=[])
        self.escalation_final_action = escalation_final_action
        self.required_approvals = required_approvals
        self.require_all = require_all
        self.allowed_approvers = problems.parse(str_list, allowed_approvers, "allowed_approvers", default=[])
        self.allowed_roles = problems.parse(str_list, allowed_roles, "allowed_roles", default=[])
        self.allow_self_approval = allow_self_approval
        self.on_reject = on_reject
        self.metadata = dict(metadata or {}) if isinstance(metadata, Mapping) or metadata is None else metadata
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        self.notify = parse_notify(
            channels=notify_channels,
            users=notify_users,
            roles=notify_roles,
            slack_channel=slack_channel,
            slack_conn_id=slack_conn_id,
            smtp_conn_id=smtp_conn_id,
            webhook_conn_id=webhook_conn_id,
            webhook_endpoint=webhook_endpoint,
            remind_every=remind_every,
            templates=notify_templates,
            problems=problems,
            teams_conn_id=teams_conn_id,
        )
        self.remind_every = remind_every
        self.inputs = problems.parse(parse_inputs, inputs, default={})
        self.distinct_from = problems.parse(parse_distinct_from, distinct_from, self.task_id, default=[])
        self.bind = dict(bind or {}) if isinstance(bind, Mapping) or bind is None else bind
        self.notifiers: list[BaseNotifier] = problems.parse(parse_notifiers, notifiers, default=[])
        self._validate(problems)
        if problems:
            frame = dag_file_frame()
            error = InvalidApprovalConfig.of(problems.items, where=self._where(frame))
            raise_at(error, frame)

    # ------------------------------------------------------------------ parse time

    def _validate(self, problems: ConfigProblems) -> None:
        if not isinstance(self.context, Mapping):
            problems.add("context", "must be a dict")
        if not isinstance(self.metadata, Mapping):
            problems.add("metadata", "must be a dict")
        if not isinstance(self.allow_self_approval, bool):
            problems.add("allow_self_approval", "must be True or False")
        if not isinstance(self.require_all, bool):
            problems.add("require_all", "must be True or False")
        if self.approval_type == ApprovalType.CONDITIONAL and not callable(self.condition):
            problems.add("condition", "a callable is required when approval_type='conditional'")
        if self.condition is not None and self.approval_type != ApprovalType.CONDITIONAL:
            problems.add("condition", "is only used with approval_type='conditional'")
        if self.poll_interval is not None and (
            not isinstance(self.poll_interval, (int, float)) or self.poll_interval <= 0
        ):
            problems.add("poll_interval", "must be a positive number of seconds")
        # Templated values are not rendered yet; check the shape of everything else now. A field
        # already reported (say escalate_to, left empty after its own error) is not reported again.
        reported = {option_of(name) for name, _ in problems.items}
        for name, message in self._spec(dag_id="validation", context={}, metadata={}).problems().items:
            if option_of(name) not in reported:
                problems.add(name, message)

    def resolve_template_files(self) -> None:
        """Airflow's step once the DAG is complete (``DagBag.bag_dag``): check ``distinct_from`` against it too.

        The one call Airflow makes on each task after the whole DAG is built and before it is
        kept: an error here is the DAG's import error. A gate only knows its own options when
        it joins the DAG, not which tasks come after it.
        """
        super().resolve_template_files()
        self._check_distinct_from()

    def _check_distinct_from(self) -> None:
        """Raise naming the DAG, this task and each name of ``distinct_from`` that is not a gate of the DAG."""
        if not self.distinct_from or not self.has_dag():  # type: ignore[no-untyped-call]
            return
        problems = distinct_from_problems(self.distinct_from, self.dag.task_dict, is_gate=is_approval_gate)
        if problems:
            raise InvalidApprovalConfig.of(
                [("distinct_from", message) for message in problems], where=self._where(None)
            )

    def _where(self, frame: FrameType | None) -> str:
        """'of task ... in DAG ... at file:line', for the error a DAG author reads."""
        where = f"of task {self.task_id!r}"
        if self.has_dag():  # type: ignore[no-untyped-call]
            where += f" in DAG {self.dag_id!r}"
        if frame is not None:
            where += f" at {frame.f_code.co_filename}:{frame.f_lineno}"
        return where

    def _spec(self, **overrides: Any) -> ApprovalSpec:
        fields: dict[str, Any] = {
            "title": self.title,
            "description": self.description,
            "reason": self.reason,
            "context": self.context,
            "approval_type": self.approval_type,
            "timeout": self.timeout,
            "timeout_action": self.timeout_action,
            "sla": self.sla,
            "escalation_targets": tuple(self.escalate_to),
            "escalation_final_action": self.escalation_final_action,
            "required_approvals": self.required_approvals,
            "require_all": self.require_all,
            "allowed_approvers": tuple(self.allowed_approvers),
            "allowed_roles": tuple(self.allowed_roles),
            "allow_self_approval": self.allow_self_approval,
            "on_reject": self.on_reject,
            "metadata": self.metadata,
            "notify": self.notify,
            "inputs": self.inputs,
            "distinct_from": tuple(self.distinct_from),
            "bound": self.bind,
        }
        fields.update(overrides)
        return ApprovalSpec(**fields)

    # ------------------------------------------------------------------ run time

    def _manager(self) -> ApprovalManager:
        return ApprovalManager(conn_id=self.conn_id)

    def execute(self, context: Context) -> Any:
        """Open (or find again) this try's request, then wait (parked, or in the triggerer) unless already decided."""
        ti = context["ti"]
        dag_run = context["dag_run"]
        # A branch gate checks its branches against the DAG before asking anyone; every gate its
        # distinct_from (a mapped gate's options are first checked here, when it is unmapped).
        self._followed_tasks()
        self._check_distinct_from()
        manager = self._manager()
        earlier = self._decided_by_earlier_try(manager, ti)
        if earlier is not None:
            self.log.info(
                "approval request %s of try %s was %s: a retry does not ask again (clear the task to ask again)",
                earlier.id,
                earlier.try_number,
                earlier.state,
            )
            return self._finish(context, earlier)
        gate_context = dict(self.context)
        gate_context.update(self._pull_context(context))
        spec = self._spec(
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=getattr(ti, "map_index", -1) if getattr(ti, "map_index", None) is not None else -1,
            try_number=ti.try_number,
            # This try's own id (new for every try, and for a DAG run deleted and created again):
            # the request an earlier life of the run opened under the same try is never taken.
            task_instance_id=getattr(ti, "id", None),
            context=gate_context,
            requested_by=getattr(dag_run, "triggering_user_name", None),
            # Rendered by now (a template field): what approvers are shown and the decision binds.
            bound=self.bind,
        )
        approval = manager.create(spec)
        self.log.info(
            "approval request %s for %s.%s (try %s) is %s",
            approval.id,
            ti.dag_id,
            ti.task_id,
            ti.try_number,
            approval.state,
        )
        if approval.is_waiting and self.approval_type == ApprovalType.AUTO:
            approval = manager.decide_automatically(
                approval.id, source=Source.AUTO, comment="approved automatically (approval_type='auto')"
            )
        elif approval.is_waiting and self.approval_type == ApprovalType.CONDITIONAL:
            assert self.condition is not None
            if self.condition(gate_context):
                approval = manager.decide_automatically(
                    approval.id, source=Source.CONDITION, comment="approved automatically: condition is true"
                )
            else:
                self.log.info("condition is false: waiting for people")
        if not approval.is_waiting:
            return self._finish(context, approval)
        # Fast path: the worker is here anyway, so "required" goes out now rather than at the
        # api-server drainer's next wake-up; the outbox claim makes sure only one of them sends it.
        self._drain_outbox(manager, approval.id, event_types=(Event.REQUIRED,))
        self._call_notifiers(context, approval)
        self._wait(approval)

    def _decided_by_earlier_try(self, manager: ApprovalManager, ti: Any) -> Approval | None:
        """A rejected or cancelled request of an earlier try of this clear, which a retry must not re-open.

        Retries are for failures of the machinery (a store outage, a lost worker), not a second
        chance to ask: Airflow routes a gate failed by a rejection to ``up_for_retry`` when the
        task has retries, and that retry ends at once with the same decision. Clearing the task
        starts a new series of tries (Airflow raises ``max_tries``) and asks again.
        """
        retries = int(self.retries or 0)
        max_tries = getattr(ti, "max_tries", None)
        if not retries or not isinstance(max_tries, int) or ti.try_number <= 1:
            return None
        first_try = max_tries - retries + 1
        approvals, _ = manager.queries.list(
            ApprovalFilter(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id),
            limit=1000,
            order_by="-requested_at",
        )
        map_index = getattr(ti, "map_index", -1)
        map_index = -1 if map_index is None else map_index
        for approval in approvals:
            if approval.map_index != map_index or approval.try_number is None:
                continue
            if not first_try <= approval.try_number < ti.try_number:
                continue
            if approval.is_waiting or approval.approved:
                return None
            if approval.state == State.CANCELLED and approval.decision_source in (Source.SYSTEM, Source.AIRFLOW):
                return None  # superseded or killed by Airflow itself: not a person's decision
            return approval
        return None

    def _drain_outbox(
        self, manager: ApprovalManager, request_id: str, event_types: Sequence[str] | None = None
    ) -> None:
        """Send the request's due notices from this worker; a failure is logged, never raised."""
        if not self.notify.get("channels"):
            return
        try:
            from airflow_hitl.notifications.drainer import OutboxDrainer

            # Users this process cannot resolve (FAB users' emails) are left to the api-server.
            OutboxDrainer(manager=manager, defer_unresolved=True).drain(request_id=request_id, event_types=event_types)
        except Exception:
            self.log.exception("could not send the notices of approval request %s", request_id)

    def _call_notifiers(self, context: Context, approval: Approval) -> None:
        """Call the gate's Airflow notifiers with the task's context; never raise, never wait past the budget.

        The request is open (and our own channels' first notices queued) before any notifier runs,
        so a slow or broken notifier cannot keep people from deciding: each runs in turn on one
        thread, a failure is logged naming the gate and the notifier, and after
        ``notifier_budget`` seconds the gate defers while the rest finish, or not, on their own.
        """
        if not self.notifiers:
            return
        where = f"gate {self.task_id!r} of DAG {approval.dag_id!r} (approval request {approval.id})"
        # Each notifier gets its own copy: BaseNotifier merges its template fields into the context it is given.
        shared = {**context, "approval": approval.to_dict()}
        running: list[str] = []

        def call_each() -> None:
            for index, notifier in enumerate(self.notifiers):
                name = f"notifiers[{index}] ({type(notifier).__name__})"
                running[:] = [name]
                try:
                    notifier(dict(shared))
                except Exception:
                    self.log.exception("%s: %s failed; the gate waits regardless", where, name)
            running.clear()

        thread = threading.Thread(target=call_each, name=f"hitl-notifiers-{approval.id}", daemon=True)
        thread.start()
        thread.join(self.notifier_budget)
        if thread.is_alive():
            self.log.warning(
                "%s: %s still running after %s s; the gate waits without it and any notifier after it",
                where,
                ", ".join(running) or "a notifier",
                self.notifier_budget,
            )

    def _wait(self, approval: Approval) -> None:
        """Wait for people without holding a worker: park in ``awaiting_input``, or defer to the trigger.

        Airflow 3.3+ parks the task (no trigger, no triggerer slot); the api-server ends it once
        the request closes, and Airflow's own deadline sweep resumes it here (``execute_complete``)
        a grace period after ``expires_at`` if nothing did. Airflow 3.1 and 3.2, ``airflow dags
        test``, ``[hitl] park_gates = False`` and ``[hitl] gate_closer = False`` defer to
        :class:`ApprovalTrigger` instead.
        """
        settings = HitlSettings.load()
        # Only the api-server's gate closer ends a parked gate: without it, the trigger must.
        if HAS_AWAITING_INPUT and settings.park_gates and settings.gate_closer and parking.can_park():
            self.log.info(
                "approval request %s: waiting in awaiting_input (no trigger) until it is decided%s",
                approval.id,
                f" or expires at {approval.expires_at.isoformat()}" if approval.expires_at else "",
            )
            parking.park(
                method_name="execute_complete",
                # Plain JSON: Airflow keeps it as given, and the api-server reads the request id in it.
                kwargs={"request_id": approval.id, "follow": self._followed_tasks()},
                timeout=parking.backstop_timeout(approval.expires_at, now=utcnow()),
            )
        self.defer(
            trigger=ApprovalTrigger(
                request_id=approval.id,
                conn_id=self.conn_id,
                poll_interval=self.poll_interval,
                end_task=True,
                follow=self._followed_tasks(),
            ),
            method_name="execute_complete",
        )

    def execute_complete(
        self,
        context: Context,
        event: ApprovalTriggerEventPayload | Mapping[str, Any] | None = None,
        request_id: str | None = None,
        follow: Mapping[str, Any] | None = None,
    ) -> Any:
        """Resume on a worker: a parked gate Airflow's deadline sweep resumed, or a trigger's event.

        A parked gate (``request_id`` given: what it parked with) is resumed by Airflow's sweep
        of passed deadlines only when nothing acted on its deadline (no api-server ran): the
        timeout is applied here, then the gate finishes, or waits again after an escalation.
        A trigger of this release ends the task itself and this method never runs for it; only
        triggers of older releases and ``airflow dags test`` resume here with their event. The
        manager queued the escalation, reminder and outcome notices in the outbox; this worker
        sends what is due now.
        """
        if request_id is not None:
            return self._resume_parked(context, request_id, event)
        if not event or "request_id" not in event:
            raise AirflowFailException(f"approval trigger returned no usable event: {event!r}")
        if event.get("status") == "error":
            raise AirflowFailException(event.get("error") or "approval trigger failed")
        manager = self._manager()
        approval = manager.queries.get(event["request_id"])
        if event.get("status") == "remind" and approval.is_waiting:
            # Gates deferred before reminders became outbox intents: queue the one due now.
            from airflow_hitl.outbox import Outbox

            every = float(approval.notify.get("remind_every_seconds") or 0)
            Outbox(store=manager.store).plan_next_reminder(approval.id, after=utcnow() - dt.timedelta(seconds=every))
        self._drain_outbox(manager, approval.id)
        if approval.is_waiting:
            self.log.info("approval request %s is %s: waiting again", approval.id, approval.state)
            self._wait(approval)
        return self._finish(context, approval)

    def _resume_parked(self, context: Context, request_id: str, event: Mapping[str, Any] | None) -> Any:
        """A parked gate resumed on a worker: apply its timeout if due, then finish or park again."""
        self.log.info(
            "approval request %s: resumed by Airflow%s",
            request_id,
            " at its backstop deadline" if parking.is_timeout_event(event) else f" with {event!r}",
        )
        manager = self._manager()
        # A no-op unless the request still waits past expires_at: the api-server's deadline
        # worker, or a decision, may have come first (its row lock makes exactly one apply it).
        approval = manager.apply_timeout(request_id).approval
        self._drain_outbox(manager, approval.id)
        if approval.is_waiting:
            self.log.info("approval request %s is %s: waiting again", approval.id, approval.state)
            self._wait(approval)
        return self._finish(context, approval)

    def _followed_tasks(self) -> dict[str, list[str]] | None:
        """The direct downstream tasks each outcome follows; None for a gate that does not branch."""
        return None

    def _finish(self, context: Context, approval: Approval) -> dict[str, Any]:
        result = decision_summary(approval)
        follow = self._followed_tasks()
        # The one rule the trigger's end event follows too (airflow_hitl.policy.gate_outcome).
        outcome = gate_outcome(
            state=approval.state, decision=approval.decision, on_reject=self.on_reject, branching=follow is not None
        )
        if outcome.follow is not None and follow is not None:
            # The same XCom the trigger's end event carries: the scheduler skips the other branch.
            self.log.info("%s: following %s", approval.state, follow.get(outcome.follow, []))
            context["ti"].xcom_push(key=SKIPMIXIN_KEY, value={"followed": follow.get(outcome.follow, [])})
            return result
        if outcome.end is TaskEnd.SUCCESS:
            self.log.info("approved by %s (%s)", approval.approvers or approval.decision_source, approval.state)
            return result
        context["ti"].xcom_push(key="decision", value=result)
        if approval.state == State.CANCELLED:
            raise AirflowFailException(f"approval request {approval.id} was cancelled: {approval.comment}")
        message = (
            f"approval request {approval.id} {approval.state}: "
            f"{approval.decision} by {approval.decided_by or approval.decision_source}"
            + (f" ({approval.comment})" if approval.comment else "")
        )
        if outcome.end is TaskEnd.SKIPPED:
            raise AirflowSkipException(message)
        raise AirflowFailException(message)

    def _pull_context(self, context: Context) -> dict[str, Any]:
        pulled: dict[str, Any] = {}
        ti = context["ti"]
        for name, (task_id, key) in self.context_from.items():
            value = ti.xcom_pull(task_ids=task_id, key=key)
            if value is None:
                self.log.warning("context_from: no XCom %r from task %r for %r", key, task_id, name)
            pulled[name] = value
        return pulled


def is_approval_gate(task: Any) -> bool:
    """True for an :class:`ApprovalOperator` or a subclass (the branch gate), mapped or not."""
    if isinstance(task, ApprovalOperator):
        return True
    # A mapped gate is a MappedOperator until it runs; it keeps the class it will be.
    operator_class = getattr(task, "operator_class", None)
    return isinstance(operator_class, type) and issubclass(operator_class, ApprovalOperator)


class ApprovalBranchOperator(ApprovalOperator):
    """An approval gate that succeeds either way and follows the branch of the outcome.

    Takes every option of :class:`ApprovalOperator` plus ``branches``; approved (by people or a
    timeout whose action is ``approve``) follows ``branches["approve"]``, rejected follows
    ``branches["reject"]``, and every other direct downstream task is skipped, as with Airflow's
    branch operators. Quorum, roles, escalation and the audit work as for any gate; a cancelled
    request fails the task. ``on_reject`` does not apply: a rejection is a branch, not a failure.

    :param branches: ``{"approve": <task id or list>, "reject": <task id or list>}``; the ids
        must be direct downstream tasks of the gate (checked when the gate runs, naming the
        field). An outcome left out follows no task: all direct downstream tasks are skipped.
    """

    # Tells the scheduler (through the serialized DAG) to honour our ``skipmixin_key`` XCom.
    inherits_from_skipmixin = True
    ui_color = "#f6c365"

    def __init__(self, *, branches: Mapping[str, Any], **kwargs: Any) -> None:
        # Set before the base class validates, so one error names every bad option.
        self._branch_problems = ConfigProblems()
        self.branches = self._branch_problems.parse(parse_branches, branches, default={})
        if "on_reject" in kwargs:
            self._branch_problems.add(
                "on_reject", "does not apply to a branch gate: a rejection follows branches['reject']"
            )
            kwargs.pop("on_reject")
        super().__init__(**kwargs)

    def _validate(self, problems: ConfigProblems) -> None:
        problems.items.extend(self._branch_problems.items)
        super()._validate(problems)

    def _followed_tasks(self) -> dict[str, list[str]]:
        """Per outcome, the direct downstream tasks to follow; raises when a branch is not downstream.

        Like Airflow's ``skip_all_except``: a task downstream of a followed branch task (a join)
        is followed too, so it is not skipped for being a direct child of the gate as well.
        """
        downstream = set(self.downstream_task_ids)
        stray = sorted({t for ids in self.branches.values() for t in ids} - downstream)
        if stray:
            raise InvalidApprovalConfig(
                "branches",
                f"tasks {stray} are not direct downstream tasks of the gate "
                f"(downstream: {sorted(downstream) or 'none'}); set gate >> [{', '.join(stray)}]",
                where=self._where(None),
            )
        follow: dict[str, list[str]] = {}
        for outcome in BRANCH_OUTCOMES:
            ids = set(self.branches.get(outcome, ()))
            for task_id in list(ids):
                ids.update(self.dag.get_task(task_id).get_flat_relative_ids(upstream=False))
            # A plain key: the trigger's kwargs go through Airflow's serialization.
            follow[str(outcome)] = sorted(downstream & ids)
        return follow
