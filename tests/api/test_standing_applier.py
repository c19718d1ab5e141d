"""api/standing_applier.py: casting the votes standing approvals owe, on real stores (SQLite and PostgreSQL).

The applier is given the auth manager's answers as callables (``roles_of``, ``access``): here
they are plain functions over a table of users, as the auth manager of a running api-server
would answer (tests/e2e/test_standing_e2e.py runs the real one). Everything else is real: the
store, the manager's one decision path, the row locks, PostgreSQL's NOTIFY and advisory locks,
and a TCP proxy that takes the store away.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from airflow_hitl.api.standing_applier import StandingApplier
from airflow_hitl.exceptions import StoreError
from airflow_hitl.manager import ApprovalManager, Decision
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.models.tables import ApprovalOutboxRow
from airflow_hitl.policy import EscalationLevel, Principal
from airflow_hitl.records import Approval
from airflow_hitl.spec import utcnow
from airflow_hitl.standing import OwedVote, StandingApproval
from airflow_hitl.vocabulary import Action, Source
from tests.api.tcp_proxy import TcpProxy
from tests.e2e.harness import wait_until
from tests.helpers import Clock, spec

ALICE = Principal.of("alice", ["op"])
BOB = Principal.of("bob", ["op"])
#: What the auth manager knows of each user (anyone else: unknown).
ROLES: dict[str, frozenset[str]] = {"alice": frozenset({"op"}), "bob": frozenset({"op"}), "carol": frozenset({"op"})}


def roles_of(name: str) -> frozenset[str] | None:
    """The auth manager's answer: a user's roles, None for a user it does not know."""
    return ROLES.get(name)


def may_decide(user: str, dag_id: str) -> str | None:
    """Everyone known may decide every DAG's gates."""
    return None


def applier(
    manager: ApprovalManager,
    *,
    roles: Callable[[str], Iterable[str] | None] = roles_of,
    access: Callable[[str, str], str | None] = may_decide,
    **kw: Any,
) -> StandingApplier:
    """An applier over ``manager`` (not started: ``apply`` is called by the test)."""
    return StandingApplier(manager_factory=lambda: manager, roles_of=roles, access=access, **kw)


def stand(
    manager: ApprovalManager,
    *,
    owner: Principal = ALICE,
    dag_id: str = "release",
    now: dt.datetime | None = None,
    **kw: Any,
) -> StandingApproval:
    """``owner`` approves ahead the gates of ``dag_id`` for the next day (from ``now``, default: the real now)."""
    until = (now or utcnow()) + dt.timedelta(days=1)
    fields: dict[str, Any] = {"valid_until": until, "comment": "approved ahead for the weekend"}
    fields.update(kw)
    return manager.standing.create(actor=owner, dag_id=dag_id, **fields)


def standing_votes(approval: Approval) -> list[Any]:
    return [v for v in approval.votes if v.source == Source.STANDING]


def outbox_events(store: ApprovalStore, request_id: str) -> list[tuple[str, str]]:
    """(event type, dedupe key) of the notices queued for ``request_id``."""
    with store.session() as session:
        rows = session.execute(
            select(ApprovalOutboxRow.event_type, ApprovalOutboxRow.dedupe_key).where(
                ApprovalOutboxRow.request_id == request_id
            )
        ).all()
    return [(r.event_type, r.dedupe_key) for r in rows]


def decided_as(manager: ApprovalManager, request_id: str, state: str) -> Approval | None:
    """The request once it is in ``state``, else None."""
    approval = manager.queries.get(request_id)
    return approval if approval.state == state else None


class TestCast:
    def test_an_owed_vote_is_the_owners_approval_with_source_standing(self, mgr: ApprovalManager) -> None:
        standing = stand(mgr, max_uses=2)
        gate = mgr.create(spec())
        worker = applier(mgr)

        assert worker.apply(mgr) == 1
        decided = mgr.queries.get(gate.id)
        assert (decided.state, decided.decided_by) == ("approved", "alice")
        (vote,) = decided.votes
        assert (vote.user, vote.vote, vote.source, vote.comment) == ("alice", "approve", "standing", standing.comment)
        assert vote.user_roles == ("op",), "the roles the auth manager gives the owner now"
        assert vote.metadata["standing"] == {
            "id": standing.id,
            "uses_left": 1,
            "max_uses": 2,
            "valid_until": standing.valid_until.isoformat(),
        }
        assert mgr.standing.get(standing.id).uses_left == 1
        (owed,) = mgr.standing.owed_to(gate.id)
        assert (owed["standing_id"], owed["status"], owed["reason"], owed["approver"]) == (
            standing.id,
            "used",
            None,
            "alice",
        )
        assert (worker.cast, worker.skipped) == (1, 0)
        # The owner's notice is queued with the vote; the vote's audit event names the approval.
        assert ("standing_used", f"standing_used:{standing.id}:0") in outbox_events(mgr.store, gate.id)
        (event,) = [e for e in mgr.audit.events(gate.id) if e.event_type == "vote"]
        assert (event.actor, event.source) == ("alice", "standing")
        assert event.details["facts"]["vote"]["metadata"]["standing"]["id"] == standing.id
        assert mgr.audit.verify_audit_chain().ok
        assert worker.apply(mgr) == 0, "nothing is owed any more"

    def test_the_owner_unknown_to_the_auth_manager_is_skipped_with_the_reason(self, mgr: ApprovalManager) -> None:
        standing = stand(mgr, owner=Principal.of("dave", ["op"]), max_uses=3)
        gate = mgr.create(spec())
        worker = applier(mgr)

        assert worker.apply(mgr) == 1
        assert (worker.cast, worker.skipped) == (0, 1)
        assert mgr.queries.get(gate.id).state == "pending" and mgr.queries.get(gate.id).votes == ()
        (owed,) = mgr.standing.owed_to(gate.id)
        assert owed["status"] == "skipped"
        assert owed["reason"] == "Airflow's auth manager does not know 'dave'"
        assert mgr.standing.get(standing.id).uses_left == 3, "a skipped vote spends nothing"
        assert worker.apply(mgr) == 0, "a skipped vote is settled, not owed again"

    def test_one_owner_the_auth_manager_fails_on_holds_up_nobody_else(self, mgr: ApprovalManager) -> None:
        stand(mgr, owner=Principal.of("carol", ["op"]))
        stand(mgr, owner=BOB)
        gate = mgr.create(spec(required_approvals=2))

        def flaky(name: str) -> frozenset[str] | None:
            if name == "carol":
                raise RuntimeError("the auth manager's database is away")
            return roles_of(name)

        worker = applier(mgr, roles=flaky)
        assert worker.apply(mgr) == 1, "bob's vote is cast; carol's waits"
        assert [v.user for v in mgr.queries.get(gate.id).votes] == ["bob"]
        assert sorted(o["status"] for o in mgr.standing.owed_to(gate.id)) == ["due", "used"]
        # Once the auth manager answers again, carol's owed vote is cast at the next look.
        assert applier(mgr).apply(mgr) == 1
        assert mgr.queries.get(gate.id).state == "approved"

    @pytest.mark.parametrize(
        ("gate_fields", "access", "reason"),
        [
            ({"requested_by": "alice"}, may_decide, "you triggered this run and cannot approve it yourself"),
            ({"allowed_approvers": ["bob", "carol"]}, may_decide, "you are not an allowed approver of this request"),
            ({}, lambda user, dag_id: f"{user} may not edit DAG {dag_id}", "alice may not edit DAG release"),
        ],
        ids=["self-approval", "not-an-approver", "no-dag-access"],
    )
    def test_the_gates_policy_refuses_it_and_the_gate_waits_for_others(
        self,
        mgr: ApprovalManager,
        gate_fields: dict[str, Any],
        access: Callable[[str, str], str | None],
        reason: str,
    ) -> None:
        standing = stand(mgr, max_uses=1)
        gate = mgr.create(spec(**gate_fields))
        worker = applier(mgr, access=access)

        worker.apply(mgr)
        assert (worker.cast, worker.skipped) == (0, 1)
        (owed,) = mgr.standing.owed_to(gate.id)
        assert (owed["status"], owed["reason"]) == ("skipped", reason)
        assert mgr.standing.get(standing.id).uses_left == 1
        assert "standing_used" not in {event for event, _ in outbox_events(mgr.store, gate.id)}
        # The gate waits for someone else, who decides it as usual.
        assert mgr.queries.get(gate.id).is_waiting
        assert mgr.approve(gate.id, user=BOB).state == "approved"

    def test_a_quorum_counts_the_standing_vote_once(self, mgr: ApprovalManager) -> None:
        stand(mgr)
        gate = mgr.create(spec(required_approvals=2))
        applier(mgr).apply(mgr)
        waiting = mgr.queries.get(gate.id)
        assert waiting.is_waiting and [v.user for v in standing_votes(waiting)] == ["alice"]
        # alice voted already (ahead): her own vote now is refused, bob's completes the quorum.
        with pytest.raises(Exception, match="already"):
            mgr.approve(gate.id, user=ALICE)
        done = mgr.approve(gate.id, user=BOB)
        assert done.state == "approved" and [v.user for v in done.votes] == ["alice", "bob"]

    def test_a_standing_approval_revoked_before_its_vote_is_cast_casts_nothing(self, mgr: ApprovalManager) -> None:
        standing = stand(mgr)
        gate = mgr.create(spec())
        mgr.standing.revoke(standing.id, actor=ALICE)
        worker = applier(mgr)

        worker.apply(mgr)
        assert (worker.cast, worker.skipped) == (0, 1)
        (owed,) = mgr.standing.owed_to(gate.id)
        assert owed["status"] == "skipped" and "revoked" in owed["reason"]
        assert mgr.queries.get(gate.id).votes == ()

    def test_two_gates_owed_against_one_use_get_one_vote(self, mgr: ApprovalManager) -> None:
        standing = stand(mgr, max_uses=1)
        first, second = mgr.create(spec()), mgr.create(spec())
        assert len(mgr.standing.owed()) == 2, "both opened while a use was left: both are owed"
        worker = applier(mgr)

        worker.apply(mgr)
        assert (worker.cast, worker.skipped) == (1, 1)
        assert mgr.queries.get(first.id).state == "approved"
        assert mgr.queries.get(second.id).is_waiting and mgr.queries.get(second.id).votes == ()
        assert [o["status"] for o in mgr.standing.owed_to(second.id)] == ["skipped"]
        assert "no uses left" in mgr.standing.owed_to(second.id)[0]["reason"]
        after = mgr.standing.get(standing.id)
        assert after.uses_left == 0 and after.state_at(utcnow()) == "used_up"
        third = mgr.create(spec())
        assert mgr.standing.owed_to(third.id) == [], "a used-up standing approval owes no new gate"

    def test_escalation_owes_a_new_vote_and_the_old_level_is_settled(self, mgr: ApprovalManager, clock: Clock) -> None:
        standing = stand(mgr, max_uses=5, now=clock.now)
        gate = mgr.create(
            spec(
                allowed_approvers=["bob"],
                timeout=dt.timedelta(minutes=10),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("alice",), timeout=dt.timedelta(minutes=30))],
                escalation_final_action="reject",
            )
        )
        worker = applier(mgr)
        worker.apply(mgr)
        assert [(o["escalation_level"], o["status"]) for o in mgr.standing.owed_to(gate.id)] == [(0, "skipped")]
        assert mgr.queries.get(gate.id).is_waiting, "alice is not an approver of level 0"

        clock.advance(minutes=10)
        assert mgr.apply_timeout(gate.id).escalated
        worker.apply(mgr)
        owed = mgr.standing.owed_to(gate.id)
        assert [(o["escalation_level"], o["status"]) for o in owed] == [(0, "skipped"), (1, "used")]
        decided = mgr.queries.get(gate.id)
        assert decided.state == "approved" and [(v.user, v.escalation_level) for v in decided.votes] == [("alice", 1)]
        assert mgr.standing.get(standing.id).uses_left == 4

    def test_a_vote_owed_to_a_level_the_gate_left_is_skipped_and_the_new_level_cast(
        self, mgr: ApprovalManager, clock: Clock
    ) -> None:
        standing = stand(mgr, max_uses=5, now=clock.now)
        gate = mgr.create(
            spec(
                allowed_approvers=["alice", "bob"],
                timeout=dt.timedelta(minutes=10),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(minutes=30))],
                escalation_final_action="reject",
            )
        )
        clock.advance(minutes=10)
        assert mgr.apply_timeout(gate.id).escalated  # before any applier looked
        worker = applier(mgr)
        worker.apply(mgr)
        owed = mgr.standing.owed_to(gate.id)
        assert [(o["escalation_level"], o["status"]) for o in owed] == [(0, "skipped"), (1, "used")]
        assert "escalated" in owed[0]["reason"]
        assert mgr.standing.get(standing.id).uses_left == 4, "one use: the vote cast"
        assert [v.user for v in mgr.queries.get(gate.id).votes] == ["alice"]


class TestManyAppliers:
    @pytest.mark.parametrize("max_uses", [None, 7], ids=["unlimited", "fewer-uses-than-gates"])
    def test_two_appliers_on_one_store_cast_each_owed_vote_once(
        self, manager: ApprovalManager, max_uses: int | None
    ) -> None:
        gates = 20
        standing = stand(manager, max_uses=max_uses)
        ids = [manager.create(spec()).id for _ in range(gates)]
        workers = [applier(manager), applier(manager)]
        start = threading.Barrier(len(workers))
        errors: list[BaseException] = []

        def run(worker: StandingApplier) -> None:
            try:
                start.wait(timeout=30)
                while worker.apply(manager):
                    if not manager.standing.owed():
                        break
            except BaseException as err:  # reported below: a thread's failure must fail the test
                errors.append(err)

        threads = [threading.Thread(target=run, args=(w,)) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors

        used = max_uses if max_uses is not None else gates
        votes = {gate_id: standing_votes(manager.queries.get(gate_id)) for gate_id in ids}
        assert all(len(v) <= 1 for v in votes.values()), votes
        assert sum(len(v) for v in votes.values()) == used
        assert sum(w.cast for w in workers) == used, "each vote cast by exactly one of them"
        statuses = [o["status"] for gate_id in ids for o in manager.standing.owed_to(gate_id)]
        assert statuses.count("used") == used and statuses.count("due") == 0
        assert manager.standing.get(standing.id).uses_left == (0 if max_uses is not None else None)
        assert manager.audit.verify_audit_chain().ok

    def test_two_gates_spending_the_last_use_at_the_same_instant_spend_it_once(self, manager: ApprovalManager) -> None:
        # Two api-servers casting the owed votes of two different gates at once (the store's
        # lock on the standing approval's row is what orders them), many times over.
        for _ in range(10):
            standing = stand(manager, max_uses=1)
            gates = [manager.create(spec()).id, manager.create(spec()).id]
            owed = [o for o in manager.standing.owed() if o.standing_id == standing.id]
            assert sorted(o.request_id for o in owed) == sorted(gates)
            outcomes = cast_at_once(manager, owed)
            assert sorted(outcomes.values()) == ["StandingRefused", "approved"], outcomes
            assert manager.standing.get(standing.id).uses_left == 0
            assert sum(len(standing_votes(manager.queries.get(g))) for g in gates) == 1
            manager.standing.revoke(standing.id, actor=ALICE)


def cast_at_once(manager: ApprovalManager, owed: list[OwedVote]) -> dict[str, str]:
    """Cast each owed vote in a thread of its own, all released at once: request id -> state, or the error's name."""
    start = threading.Barrier(len(owed))
    outcomes: dict[str, str] = {}

    def cast(vote: OwedVote) -> None:
        decision = Decision(
            action=Action.APPROVE,
            user=Principal.of(vote.approver, ROLES[vote.approver]),
            source=Source.STANDING,
            comment=vote.comment,
            standing=vote.use,
        )
        start.wait(timeout=30)
        try:
            outcomes[vote.request_id] = manager.decide(vote.request_id, decision).state
        except Exception as err:
            outcomes[vote.request_id] = type(err).__name__

    threads = [threading.Thread(target=cast, args=(vote,)) for vote in owed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


@pytest.fixture
def proxy(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the session's PostgreSQL server, relaying."""
    # Short bounds, so an outage fails a call within seconds.
    monkeypatch.setenv("AIRFLOW__HITL__STORE_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("AIRFLOW__HITL__STORE_POOL_TIMEOUT", "2")
    monkeypatch.setenv("AIRFLOW__HITL__STORE_STATEMENT_TIMEOUT", "5")
    target = urlsplit(pg_url.replace("postgresql+psycopg", "postgresql"))
    tcp = TcpProxy(target=(target.hostname or "127.0.0.1", target.port or 5432))
    tcp.start()
    yield tcp
    tcp.stop()


@pytest.mark.postgres
class TestOnPostgres:
    def test_a_store_gone_while_casting_leaves_the_vote_owed_until_it_is_back(
        self, pg_store: ApprovalStore, pg_url: str, proxy: TcpProxy
    ) -> None:
        direct = ApprovalManager(store=pg_store)
        standing = stand(direct, max_uses=2)
        gate = direct.create(spec())
        proxied = ApprovalStore(url=make_url(pg_url).set(port=proxy.port).render_as_string(hide_password=False))
        try:
            through_proxy = ApprovalManager(store=proxied)

            def roles_then_outage(name: str) -> frozenset[str] | None:
                # The owed vote was read; the store goes away before the vote is written.
                proxy.stop()
                return roles_of(name)

            worker = applier(through_proxy, roles=roles_then_outage)
            with pytest.raises(StoreError):
                worker.apply(through_proxy)
            assert (worker.cast, worker.skipped) == (0, 0)
            assert [o["status"] for o in direct.standing.owed_to(gate.id)] == ["due"]
            assert direct.queries.get(gate.id).votes == () and direct.standing.get(standing.id).uses_left == 2

            proxy.start()
            worker = applier(through_proxy)
            assert worker.apply(through_proxy) == 1 and worker.cast == 1
            assert direct.queries.get(gate.id).state == "approved"
            assert direct.standing.get(standing.id).uses_left == 1
        finally:
            proxied.dispose()

    def test_the_stores_notify_wakes_a_started_applier(self, pg_store: ApprovalStore) -> None:
        manager = ApprovalManager(store=pg_store)
        stand(manager)
        # Polling once an hour: only the NOTIFY of the gate's opening can wake it in time.
        worker = applier(manager, poll_interval=3600)
        worker.start()
        try:
            assert worker.working.wait(30), "the applier listens on a PostgreSQL store"
            gate = manager.create(spec())
            decided = wait_until(
                lambda: decided_as(manager, gate.id, "approved"),
                timeout=60,
                interval=0.05,
                what="the standing vote, woken by NOTIFY",
            )
            assert [v.source for v in decided.votes] == ["standing"] and worker.cast == 1
        finally:
            worker.stop()
        assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("hitl-standing"))

    def test_one_applier_leads_and_another_takes_over_when_it_stops(self, pg_store: ApprovalStore) -> None:
        manager = ApprovalManager(store=pg_store)
        stand(manager)
        key = 0x5EED_0026  # this test's own lock, not a running api-server's
        workers = [applier(manager, poll_interval=3600, leader_key=key, follow_every=0.2) for _ in range(2)]
        for worker in workers:
            worker.start()
        try:
            leader = wait_until(
                lambda: next((w for w in workers if w.working.is_set()), None),
                timeout=30,
                what="one applier to lead",
            )
            follower = next(w for w in workers if w is not leader)
            assert not follower.working.is_set(), "one applier per store works at a time"
            first = manager.create(spec())
            wait_until(lambda: decided_as(manager, first.id, "approved"), timeout=60, what="the leader's vote")
            assert (leader.cast, follower.cast) == (1, 0)

            leader.stop()
            assert follower.working.wait(30), "the other applier takes the lock once the leader is gone"
            second = manager.create(spec())
            wait_until(lambda: decided_as(manager, second.id, "approved"), timeout=60, what="the new vote")
            assert follower.cast == 1
        finally:
            for worker in workers:
                worker.stop()
