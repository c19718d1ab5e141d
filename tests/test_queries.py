"""queries: reading requests (one, lists, the inbox, history, wait states) on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import event

from airflow_hitl.exceptions import ApprovalNotFound, InvalidInput
from airflow_hitl.manager import ApprovalFilter, ApprovalManager
from airflow_hitl.models.store import ApprovalStore
from airflow_hitl.policy import EscalationLevel, Principal
from tests.helpers import Clock, spec

ALICE = Principal.of("alice", ["op"])
BOB = Principal.of("bob", ["op"])
MALLORY = Principal.of("mallory", ["viewer"])


class TestGet:
    def test_unknown_id(self, mgr: ApprovalManager) -> None:
        with pytest.raises(ApprovalNotFound):
            mgr.queries.get("00000000-0000-0000-0000-000000000000")

    def test_one_request_with_its_votes(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(required_approvals=3))
        mgr.approve(a.id, user=BOB, comment="fine")
        mgr.approve(a.id, user=ALICE)
        got = mgr.queries.get(a.id)
        assert (got.id, got.state) == (a.id, "pending")
        assert [(v.user, v.vote, v.comment) for v in got.votes] == [
            ("bob", "approve", "fine"),
            ("alice", "approve", None),
        ]

    def test_reads_wait_for_no_writer(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        # A decision holding the row lock (and, on SQLite, the write lock) must not hold up
        # polls and pages: were reads to take a write lock, these would wait and fail.
        a = mgr.create(spec())
        with mgr.transactions.transaction() as session:
            mgr.transactions.lock(session, a.id)
            assert mgr.queries.get(a.id).state == "pending"
            assert mgr.queries.list()[1] == 1
            assert mgr.queries.wait_states([a.id])[a.id].state == "pending"


class TestQueries:
    def test_list_filters_pagination_and_order(self, mgr: ApprovalManager, clock: Clock) -> None:
        ids = []
        for i in range(5):
            clock.advance(seconds=1)
            ids.append(mgr.create(spec(dag_id="etl" if i % 2 else "ml", requested_by=f"u{i}")).id)
        mgr.approve(ids[0], user=ALICE)
        items, total = mgr.queries.list(ApprovalFilter(dag_id="ml"))
        assert total == 3
        assert {a.dag_id for a in items} == {"ml"}
        page, total = mgr.queries.list(limit=2, offset=1, order_by="requested_at")
        assert total == 5
        assert [a.id for a in page] == ids[1:3]
        newest, _ = mgr.queries.list(limit=1)
        assert newest[0].id == ids[-1]
        pending, total = mgr.queries.pending()
        assert total == 4
        assert ids[0] not in {a.id for a in pending}
        history, total = mgr.queries.history()
        assert [a.id for a in history] == [ids[0]]
        assert mgr.queries.list(ApprovalFilter(requested_by="u3"))[1] == 1
        assert mgr.queries.list(ApprovalFilter(decided_by="alice"))[1] == 1

    def test_history_date_range(self, mgr: ApprovalManager, clock: Clock) -> None:
        early = mgr.create(spec())
        mgr.approve(early.id, user=ALICE)
        cut = clock.advance(hours=1)
        late = mgr.create(spec())
        clock.advance(minutes=1)
        mgr.reject(late.id, user=ALICE, reason="no")
        assert [a.id for a in mgr.queries.history(ApprovalFilter(since=cut))[0]] == [late.id]
        assert [a.id for a in mgr.queries.history(ApprovalFilter(until=cut))[0]] == [early.id]
        assert [a.id for a in mgr.queries.history(ApprovalFilter(states=["rejected"]))[0]] == [late.id]

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [({"limit": -1}, "limit"), ({"offset": -5}, "offset"), ({"order_by": "password"}, "order_by")],
    )
    def test_bad_paging(self, mgr: ApprovalManager, kwargs: dict, field: str) -> None:
        with pytest.raises(InvalidInput) as err:
            mgr.queries.list(**kwargs)
        assert err.value.field == field

    def test_pending_for_says_who_can_approve(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec(allowed_approvers=["alice", "bob"], required_approvals=2))
        mgr.approve(a.id, user=BOB)
        flags = {user.name: mgr.queries.pending_for(user)[0][0][1] for user in (ALICE, BOB, MALLORY)}
        assert flags["alice"].allowed
        assert flags["bob"].code == "already_voted"
        assert flags["mallory"].code == "not_allowed"

    def test_wait_states_in_one_query(self, mgr: ApprovalManager, store: ApprovalStore) -> None:
        ids = [mgr.create(spec()).id for _ in range(3)]
        mgr.approve(ids[1], user=ALICE)
        many = ids + [f"00000000-0000-4000-8000-{i:012d}" for i in range(40_000)]
        statements: list[str] = []
        from sqlalchemy import event

        def count(*args: object) -> None:
            statements.append(str(args[2]))

        event.listen(store.engine, "before_cursor_execute", count)
        try:
            states = mgr.queries.wait_states(many)
        finally:
            event.remove(store.engine, "before_cursor_execute", count)
        assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
        assert set(states) == set(ids)
        assert states[ids[1]].state == "approved"
        assert states[ids[0]].is_waiting

    def test_limit_bounds(self, mgr: ApprovalManager) -> None:
        mgr.create(spec())
        assert mgr.queries.list(limit=0) == ([], 1)
        assert mgr.queries.list(limit=10_000)[1] == 1
        with pytest.raises(InvalidInput) as err:
            mgr.queries.list(limit=10_001)
        assert err.value.field == "limit"

    def test_order_ascending_descending_and_unset_times_last(self, mgr: ApprovalManager) -> None:
        never = mgr.create(spec(title="b never expires"))
        soon = mgr.create(spec(title="c soon", timeout=dt.timedelta(minutes=5), timeout_action="reject"))
        later = mgr.create(spec(title="a later", timeout=dt.timedelta(hours=5), timeout_action="reject"))
        assert [a.id for a in mgr.queries.list(order_by="expires_at")[0]] == [soon.id, later.id, never.id]
        assert [a.id for a in mgr.queries.list(order_by="-expires_at")[0]] == [later.id, soon.id, never.id]
        assert [a.title for a in mgr.queries.list(order_by="+title")[0]] == ["a later", "b never expires", "c soon"]
        assert [a.title for a in mgr.queries.list(order_by="-title")[0]] == ["c soon", "b never expires", "a later"]

    def test_pending_is_the_waiting_soonest_expiry_first(self, mgr: ApprovalManager, clock: Clock) -> None:
        never = mgr.create(spec())
        escalated = mgr.create(
            spec(
                timeout=dt.timedelta(minutes=1),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(hours=2))],
                escalation_final_action="reject",
            )
        )
        soon = mgr.create(spec(timeout=dt.timedelta(minutes=30), timeout_action="reject"))
        decided = mgr.create(spec())
        mgr.approve(decided.id, user=ALICE)
        clock.advance(minutes=1)
        assert mgr.apply_timeout(escalated.id).escalated  # now expires in two hours
        items, total = mgr.queries.pending()
        assert total == 3
        assert [a.id for a in items] == [soon.id, escalated.id, never.id]

    def test_history_never_lists_a_waiting_request(self, mgr: ApprovalManager) -> None:
        waiting = mgr.create(spec())
        done = mgr.create(spec())
        mgr.approve(done.id, user=ALICE)
        assert mgr.queries.history(ApprovalFilter(states=["pending"])) == ([], 0)
        assert [a.id for a in mgr.queries.history(ApprovalFilter(states=["pending", "approved"]))[0]] == [done.id]
        assert waiting.id in {a.id for a in mgr.queries.list()[0]}

    def test_dag_ids_each_once_sorted(self, mgr: ApprovalManager) -> None:
        assert mgr.queries.dag_ids() == []
        for dag_id in ("ml", "etl", "ml"):
            mgr.create(spec(dag_id=dag_id))
        assert mgr.queries.dag_ids() == ["etl", "ml"]

    def test_can_approve_a_decided_request(self, mgr: ApprovalManager) -> None:
        a = mgr.create(spec())
        mgr.reject(a.id, user=ALICE, reason="no")
        verdict = mgr.queries.can_approve(BOB, mgr.queries.get(a.id))
        assert (verdict.allowed, verdict.code) == (False, "not_pending")
        assert verdict.reason == "this request is rejected"

    def test_closed_task_gates_leaves_out_waiting_and_api_requests(self, mgr: ApprovalManager) -> None:
        waiting = mgr.create(spec())
        approved, rejected = mgr.create(spec()), mgr.create(spec())
        over_api = mgr.create(spec(), origin="api")
        for a in (approved, over_api):
            mgr.approve(a.id, user=ALICE)
        mgr.reject(rejected.id, user=ALICE, reason="no")
        asked = [rejected.id, waiting.id, over_api.id, approved.id, rejected.id, "no-such-id"]
        gates = mgr.queries.closed_task_gates(asked)
        assert [g.id for g in gates] == [rejected.id, approved.id]
        assert [(g.dag_id, g.run_id, g.task_id, g.map_index, g.try_number) for g in gates] == [
            (a.dag_id, a.run_id, a.task_id, a.map_index, a.try_number) for a in (rejected, approved)
        ]
        assert mgr.queries.closed_task_gates([]) == []

    def test_waiting_task_gates_fingerprint_changes_with_what_the_pass_over_parked_gates_reads(
        self, mgr: ApprovalManager, clock: Clock
    ) -> None:
        fingerprint = mgr.queries.waiting_task_gates_fingerprint
        assert fingerprint() == (0, None, 0)
        start = clock.now
        escalating = mgr.create(
            spec(
                timeout=dt.timedelta(minutes=1),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(hours=1))],
                escalation_final_action="reject",
            )
        )
        assert fingerprint() == (1, start, 0) == fingerprint(), "read again, nothing changed: the same"
        mgr.create(spec(), origin="api")
        assert fingerprint() == (1, start, 0), "a request opened over the API is no task's gate"
        voted = mgr.create(spec(allowed_approvers=["alice", "bob"], required_approvals=2))
        assert fingerprint() == (2, start, 0), "opened: one more"
        clock.advance(minutes=10)
        mgr.approve(voted.id, user=ALICE)
        assert fingerprint() == (2, clock.now, 0), "a vote writes updated_at"
        # The store's clock stepped back (NTP): the escalation's updated_at is not the latest,
        # yet the fingerprint changes, with its expires_at.
        clock.now = start + dt.timedelta(minutes=1)
        assert mgr.apply_timeout(escalating.id).escalated
        assert fingerprint() == (2, start + dt.timedelta(minutes=10), 1)
        mgr.reject(voted.id, user=BOB, reason="no")
        assert fingerprint() == (1, start + dt.timedelta(minutes=1), 1), "closed: one fewer"
        mgr.cancel(escalating.id, actor="admin", reason="done")
        assert fingerprint() == (0, None, 0)

    def test_wait_states_of_nothing_and_of_an_escalation(self, mgr: ApprovalManager, clock: Clock) -> None:
        assert mgr.queries.wait_states([]) == {}
        a = mgr.create(
            spec(
                timeout=dt.timedelta(minutes=1),
                timeout_action="escalate",
                escalation_targets=[EscalationLevel(approvers=("carol",), timeout=dt.timedelta(hours=1))],
                escalation_final_action="reject",
            )
        )
        clock.advance(minutes=1)
        mgr.apply_timeout(a.id)
        state = mgr.queries.wait_states([a.id])[a.id]
        assert (state.state, state.escalation_level, state.is_waiting) == ("escalated", 1, True)
        assert state.expires_at == clock.now + dt.timedelta(hours=1)

    def test_a_page_beyond_one_batch_of_votes_keeps_every_vote(self, mgr: ApprovalManager) -> None:
        # SQLite reads a page's votes 500 requests at a time: both ends of a 501-request page.
        ids = [mgr.create(spec(allowed_approvers=["alice", "bob"], required_approvals=2)).id for _ in range(501)]
        for request_id in (ids[0], ids[-1]):
            mgr.approve(request_id, user=BOB)
        page, total = mgr.queries.list(limit=1000, order_by="requested_at")
        assert total == 501
        voted = {a.id: [v.user for v in a.votes] for a in page if a.votes}
        assert voted == {ids[0]: ["bob"], ids[-1]: ["bob"]}

    def test_a_listed_request_is_the_request_got_alone(self, mgr: ApprovalManager) -> None:
        # Pages are read as plain rows with JSON columns as text; one request through the ORM.
        # Both must give the same record: every field, votes in the order they were cast.
        rich = mgr.create(
            spec(
                context={"rows": 3, "nested": {"ok": [1, 2.5, None, "x"]}, "empty": {}},
                metadata={"risk": "high"},
                allowed_approvers=["alice", "bob", "carol"],
                allowed_roles=["op"],
                required_approvals=3,
                escalation_targets=(EscalationLevel(approvers=("dave",), timeout=dt.timedelta(hours=1)),),
                timeout=dt.timedelta(hours=2),
                timeout_action="escalate",
                escalation_final_action="reject",
            )
        )
        mgr.approve(rich.id, user=BOB, comment="first", metadata={"ticket": 7})
        mgr.approve(rich.id, user=ALICE)
        plain = mgr.create(spec())
        listed = {a.id: a for a in mgr.queries.pending()[0]}
        assert listed[rich.id] == mgr.queries.get(rich.id)
        assert [v.user for v in listed[rich.id].votes] == ["bob", "alice"]
        assert listed[rich.id].votes[0].metadata == {"ticket": 7}
        assert listed[rich.id].context == {"rows": 3, "nested": {"ok": [1, 2.5, None, "x"]}, "empty": {}}
        assert listed[plain.id] == mgr.queries.get(plain.id)
        assert listed[plain.id].votes == ()
        assert listed[rich.id].to_dict() == mgr.queries.get(rich.id).to_dict()


@pytest.mark.postgres
class TestPagesKeptByRowVersion:
    """On PostgreSQL a page is read as ids and row versions; only what changed is read in full."""

    def test_a_page_read_again_reads_in_full_only_the_requests_that_changed(
        self, pg_store: ApprovalStore, clock: Clock
    ) -> None:
        mgr = ApprovalManager(store=pg_store, clock=clock)
        ids = [mgr.create(spec(required_approvals=2)).id for _ in range(5)]
        read_in_full: list[list[str]] = []

        def spy(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
            if "xmin" in statement and "ANY" in statement:
                read_in_full.append(sorted(params["ids"]))

        event.listen(pg_store.engine, "before_cursor_execute", spy)
        try:
            first, _ = mgr.queries.pending()
            again, _ = mgr.queries.pending()
            # The clock does not move: a vote must still be seen (it writes a new row version).
            mgr.approve(ids[1], user=ALICE)
            mgr.reject(ids[3], user=BOB, reason="no")
            third, total = mgr.queries.pending()
        finally:
            event.remove(pg_store.engine, "before_cursor_execute", spy)
        assert read_in_full == [sorted(ids), [ids[1]]]
        assert [a.id for a in again] == [a.id for a in first]
        assert total == 4 and ids[3] not in {a.id for a in third}
        assert [v.user for v in next(a for a in third if a.id == ids[1]).votes] == ["alice"]
        for got in third:
            assert got == mgr.queries.get(got.id), "a kept request is the request as read alone"

    def test_every_change_of_a_request_is_seen_on_the_next_page(self, pg_store: ApprovalStore, clock: Clock) -> None:
        mgr = ApprovalManager(store=pg_store, clock=clock)
        gate = mgr.create(
            spec(
                required_approvals=2,
                timeout=dt.timedelta(minutes=5),
                timeout_action="escalate",
                escalation_targets=(EscalationLevel(approvers=("carol",), timeout=dt.timedelta(minutes=5)),),
                escalation_final_action="reject",
            )
        )
        seen = []
        for change in (
            lambda: mgr.approve(gate.id, user=ALICE),
            lambda: (clock.advance(minutes=6), mgr.apply_timeout(gate.id)),
            lambda: mgr.cancel(gate.id, actor="admin", reason="stop"),
        ):
            change()
            page, _ = mgr.queries.list()
            [got] = page
            assert got == mgr.queries.get(gate.id)
            seen.append((got.state, got.escalation_level, len(got.votes)))
        assert seen == [("pending", 0, 1), ("escalated", 1, 1), ("cancelled", 1, 1)]
