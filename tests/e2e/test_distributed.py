"""The production topology end to end: any number of api-servers and triggerers, one outcome per gate.

One stack for the whole module, shaped like ``docker-compose.yaml``: PostgreSQL for Airflow's
metadata DB and for the approval store (the ``hitl_default`` connection), CeleryExecutor on
the local Redis with one Celery worker, two api-servers on two ports, two triggerers, the
FAB auth manager with users and roles created through Airflow's own CLI. Decisions go
through the REST API of either api-server with the users' own FAB tokens.

The tests run in file order; the triggerer crash is last because it leaves one triggerer.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from airflow_hitl.manager import ApprovalFilter
from tests.e2e.harness import (
    CLI_TIMEOUT,
    INIT_COMMANDS,
    SERVICE_COMMANDS,
    SERVICE_FLAGS,
    AirflowHarness,
    HarnessError,
    wait_until,
)
from tests.e2e.links import find_links, submit_link
from tests.e2e.mail import MailServer, serve_mail

pytestmark = pytest.mark.e2e

DISTRIBUTED_DAGS = Path(__file__).resolve().parent / "distributed_dags"
INSTANT_GATES = 20


@pytest.fixture(scope="module")
def smtp() -> Iterator[MailServer]:
    """The local mail catcher (a real SMTP server on loopback)."""
    yield from serve_mail()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, smtp: MailServer) -> Iterator[AirflowHarness]:
    """The distributed stack, started once for the module."""
    import json

    root = tmp_path_factory.mktemp("airflow-distributed")
    harness = AirflowHarness(
        root=root,
        extra_dag_dirs=[DISTRIBUTED_DAGS],
        store="postgres",
        executor="CeleryExecutor",
        auth_manager="fab",
        api_servers=2,
        triggerers=2,
        startup_timeout=900,  # seven Airflow processes on two shared cores
    )
    # Email notices and links; no [hitl] user_emails: addresses come from the FAB user records.
    harness.env.update(
        {
            # This suite keeps gates on their triggers (triggerer failover is one of its tests);
            # gates parked in awaiting_input, the default on Airflow 3.3+, are test_parking_e2e.py's.
            "AIRFLOW__HITL__PARK_GATES": "False",
            "AIRFLOW__HITL__BASE_URL": harness.base_url,
            "AIRFLOW__HITL__SIGNING_KEY": "distributed-e2e-signing-key",
            "AIRFLOW__HITL__NOTIFY_FROM_EMAIL": "airflow@example.com",
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "airflow@example.com"},
                }
            ),
        }
    )
    print(f"\nstarting the distributed Airflow in {root} on {harness.base_urls}", file=sys.stderr)
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


def decide(
    stack: AirflowHarness, approval_id: str, action: str, *, user: str, server: int, **body: Any
) -> httpx.Response:
    """``POST /hitl/api/v1/approvals/{id}/{action}`` as ``user`` through api-server ``server``."""
    return stack.api(
        "POST",
        f"/hitl/api/v1/approvals/{approval_id}/{action}",
        user=user,
        server=server,
        json_body=body,
        expect=None,
    )


def trigger_runs(stack: AirflowHarness, dag_id: str, count: int) -> list[str]:
    """Trigger ``count`` runs of ``dag_id`` as admin, alternating the api-servers."""
    stack.unpause(dag_id)
    run_ids = []
    for i in range(count):
        body = {"logical_date": None, "conf": {}}
        response = stack.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json_body=body, server=i % 2, expect=(200, 201))
        run_ids.append(str(response.json()["dag_run_id"]))
    return run_ids


def assert_resumed_once(stack: AirflowHarness, dag_id: str, run_id: str) -> None:
    """The run succeeded, its gate in its first try (one resume, no retry) and the task after it once."""
    stack.wait_for_run_state(dag_id, run_id, "success", timeout=300)
    gate = stack.task_instance(dag_id, run_id, "gate")
    assert (gate["state"], gate["try_number"]) == ("success", 1)
    after = stack.task_instance(dag_id, run_id, "after")
    assert (after["state"], after["try_number"]) == ("success", 1)


class TestTopology:
    def test_stack_ran_every_command_declared_for_docker_compose(self, stack: AirflowHarness) -> None:
        """tests/test_deployment.py holds the compose file to these declarations; here they meet real processes."""
        ran = [tuple(command[1:]) for command in stack.commands]

        def runs_of(prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
            return [words for words in ran if words[: len(prefix)] == prefix]

        for service, prefix in SERVICE_COMMANDS.items():
            runs = runs_of(prefix)
            assert runs, f"the stack never ran `airflow {' '.join(prefix)}`"
            for words in runs:
                assert {w for w in words if w.startswith("--")} <= SERVICE_FLAGS[service], words
        for prefix, flags in INIT_COMMANDS.items():
            runs = runs_of(prefix)
            assert runs, f"the stack never ran `airflow {' '.join(prefix)}`"
            for words in runs:
                assert {w for w in words if w.startswith("--")} <= flags, words
        assert (len(runs_of(("api-server",))), len(runs_of(("triggerer",)))) == (2, 2)
        assert len({job for job in stack.triggerer_jobs.values()}) == 2


class TestDecisionsThroughEitherApiServer:
    def test_instant_decisions_through_both_api_servers_never_lose_a_run(self, stack: AirflowHarness) -> None:
        dag_id = "dist_instant"
        run_ids = trigger_runs(stack, dag_id, INSTANT_GATES)
        decided: dict[str, str] = {}  # run_id -> request id
        deadline = time.monotonic() + 600
        while len(decided) < INSTANT_GATES:
            if time.monotonic() > deadline:
                raise HarnessError(f"only {len(decided)} of {INSTANT_GATES} gates opened\n{stack.dump_logs()}")
            waiting, _ = stack.manager.queries.pending(ApprovalFilter(dag_id=dag_id))
            for approval in waiting:
                if approval.run_id in run_ids and approval.run_id not in decided:
                    # The instant the request exists, before the task has even finished deferring.
                    server = len(decided) % 2
                    response = decide(stack, approval.id, "approve", user="alice", server=server, comment="now")
                    assert response.status_code == 200, response.text
                    decided[str(approval.run_id)] = approval.id
            time.sleep(0.02)

        for run_id in run_ids:
            assert_resumed_once(stack, dag_id, run_id)
            [approval] = stack.approvals(dag_id, run_id, "gate")
            assert (approval.id, approval.state, approval.decided_by) == (decided[run_id], "approved", "alice")


class TestQuorumAcrossApiServers:
    def test_two_votes_at_the_same_moment_approve_once_and_resume_once(self, stack: AirflowHarness) -> None:
        dag_id = "dist_quorum"
        [run_id] = trigger_runs(stack, dag_id, 1)
        approval = stack.wait_for_approval(dag_id, run_id, "gate", states=["pending"], timeout=300)
        stack.wait_for_ti_state(dag_id, run_id, "gate", "deferred", timeout=300)
        for user in ("alice", "bob"):
            stack.token(user)  # log in first, so both votes leave at the same moment

        barrier = threading.Barrier(2)
        results: dict[str, httpx.Response] = {}

        def vote(user: str, server: int) -> None:
            barrier.wait()
            results[user] = decide(stack, approval.id, "approve", user=user, server=server, comment=f"{user} ok")

        threads = [threading.Thread(target=vote, args=(u, s)) for u, s in (("alice", 0), ("bob", 1))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {u: r.status_code for u, r in results.items()} == {"alice": 200, "bob": 200}

        decided = stack.manager.queries.get(approval.id)
        assert decided.state == "approved"
        assert sorted(v.user for v in decided.votes) == ["alice", "bob"]
        events = [e.event_type for e in stack.manager.audit.events(approval.id)]
        assert events.count("vote") == 2
        assert events.count("approved") == 1, events
        assert_resumed_once(stack, dag_id, run_id)


class TestFabRoles:
    def test_custom_fab_role_decides_and_others_are_refused_with_the_reason(self, stack: AirflowHarness) -> None:
        dag_id = "dist_release_managers"
        [run_id] = trigger_runs(stack, dag_id, 1)
        approval = stack.wait_for_approval(dag_id, run_id, "gate", states=["pending"], timeout=300)

        pending = stack.api("GET", "/hitl/api/v1/approvals/pending", user="bob", server=1).json()
        mine = {a["id"]: a for a in pending["approvals"]}
        assert mine[approval.id]["can_approve"] is False

        refused = decide(stack, approval.id, "approve", user="bob", server=1)
        assert refused.status_code == 403
        assert "not an allowed approver" in refused.json()["detail"]
        assert stack.manager.queries.get(approval.id).state == "pending"

        accepted = decide(stack, approval.id, "approve", user="alice", server=0, comment="release manager")
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["state"] == "approved"
        assert_resumed_once(stack, dag_id, run_id)


class TestFabSession:
    def test_pages_and_api_accept_a_fab_login_session(self, stack: AirflowHarness) -> None:
        with httpx.Client(base_url=stack.base_urls[1], timeout=60, trust_env=False, follow_redirects=True) as browser:
            assert browser.get("/hitl/api/v1/approvals/pending").status_code == 401
            form = browser.get("/auth/login/")
            assert form.status_code == 200, form.text[:500]
            csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', form.text)
            assert csrf, form.text[:2000]
            done = browser.post(
                "/auth/login/",
                data={"csrf_token": csrf.group(1), "username": "alice", "password": stack.passwords["alice"]},
            )
            assert done.status_code == 200, done.text[:500]
            assert browser.cookies.get("_token"), "FAB's login sets the UI's token cookie"
            api = browser.get("/hitl/api/v1/approvals/pending")
            assert api.status_code == 200, api.text
            page = browser.get("/hitl/ui/")
            assert page.status_code == 200
            assert "Approvals" in page.text


class TestFabDelegations:
    """Delegation as FAB sees it: FAB's ``Admin`` role is the admin, FAB's user table says who exists,
    and a delegate decides with the delegator's FAB roles."""

    DELEGATIONS = "/hitl/api/v1/delegations"

    def test_admin_delegates_for_a_release_manager_whose_roles_the_delegate_then_decides_with(
        self, stack: AirflowHarness
    ) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        terms = {
            "delegate": "bob",
            "delegator": "alice",
            "starts_at": (now - dt.timedelta(minutes=1)).isoformat(),
            "ends_at": (now + dt.timedelta(hours=1)).isoformat(),
            "dag_ids": ["dist_release_managers"],
        }
        # An Op is no admin: refused before anything is looked up or written.
        refused = stack.api("POST", self.DELEGATIONS, user="bob", server=1, json_body=terms, expect=None)
        assert refused.status_code == 403, refused.text
        assert "only an admin" in refused.json()["detail"]
        # FAB's user table decides who exists; a name it does not hold is named in the refusal.
        unknown = stack.api("POST", self.DELEGATIONS, server=0, json_body={**terms, "delegate": "nobody"}, expect=None)
        assert unknown.status_code == 422, unknown.text
        assert "nobody" in unknown.text
        assert stack.api("GET", self.DELEGATIONS, user="alice", params={"state": "active"}).json()["total_entries"] == 0

        created = stack.api("POST", self.DELEGATIONS, server=0, json_body=terms, expect=(201,)).json()
        assert (created["delegator"], created["delegate"], created["created_by"], created["state"]) == (
            "alice",
            "bob",
            "admin",
            "active",
        )
        assert stack.api("GET", self.DELEGATIONS, user="bob", params={"user": "alice"}, expect=None).status_code == 403
        listed = stack.api("GET", self.DELEGATIONS, params={"user": "alice"}, server=1).json()
        assert [d["id"] for d in listed["delegations"]] == [created["id"]]
        # The delegate cannot end what the delegator gave.
        ending = stack.api("DELETE", f"{self.DELEGATIONS}/{created['id']}", user="bob", server=1, expect=None)
        assert ending.status_code == 403, ending.text

        try:
            # The gate admits only FAB's ReleaseManagers; bob is an Op, alice a release manager.
            [run_id] = trigger_runs(stack, "dist_release_managers", 1)
            approval = stack.wait_for_approval("dist_release_managers", run_id, "gate", states=["pending"], timeout=300)
            decided = decide(stack, approval.id, "approve", user="bob", server=1, comment="for alice")
            assert decided.status_code == 200, decided.text
            [vote] = decided.json()["votes"]
            assert (vote["user"], vote["delegate"], decided.json()["state"]) == ("alice", "bob", "approved")
            assert "ReleaseManagers" in vote["user_roles"]
            assert_resumed_once(stack, "dist_release_managers", run_id)
        finally:
            stack.api("DELETE", f"{self.DELEGATIONS}/{created['id']}", server=1, expect=(204,))
        ended = stack.api("GET", self.DELEGATIONS, params={"user": "alice"}).json()["delegations"]
        assert [(d["id"], d["state"], d["ended_by"]) for d in ended] == [(created["id"], "ended", "admin")]

    def test_a_delegator_demoted_in_fab_while_the_api_servers_run_decides_nothing_through_the_delegate(
        self, stack: AirflowHarness
    ) -> None:
        """Issue 23, item 8: carol (Op) delegates to dave, FAB's CLI demotes her to Viewer; dave's vote
        for her on a 2-of-[alice, bob, carol] gate is refused on both api-servers until her role is back."""
        for user in ("carol", "dave"):
            password = "pw" + secrets.token_urlsafe(12)
            argv = ["users", "create", "--username", user, "--password", password, "--firstname", user]
            argv += ["--lastname", "Example", "--email", f"{user}@example.com", "--role", "Op"]
            stack.run_cli(argv, log="fab-users.log", timeout=CLI_TIMEOUT)
            stack.passwords[user] = password
        now = dt.datetime.now(dt.timezone.utc)
        terms = {
            "delegate": "dave",
            "starts_at": (now - dt.timedelta(minutes=1)).isoformat(),
            "ends_at": (now + dt.timedelta(hours=1)).isoformat(),
            "dag_ids": ["dist_quorum"],
        }
        created = stack.api("POST", self.DELEGATIONS, user="carol", server=1, json_body=terms, expect=(201,)).json()
        assert (created["delegator"], created["delegate"], created["state"]) == ("carol", "dave", "active")

        def roles(*argvs: list[str]) -> None:
            for argv in argvs:
                stack.run_cli(["users", *argv, "--username", "carol"], log="fab-users.log", timeout=CLI_TIMEOUT)

        def for_carol(server: int) -> httpx.Response:
            return decide(stack, approval.id, "approve", user="dave", server=server, on_behalf_of="carol")

        def counted_for_carol() -> httpx.Response | None:
            response = for_carol(1)
            return None if response.status_code == 403 else response

        def seen_by_dave() -> tuple[bool, str | None]:
            item = stack.api("GET", f"/hitl/api/v1/approvals/{approval.id}", user="dave", server=0).json()
            return item["can_approve"], item["can_approve_for"]

        try:
            [run_id] = trigger_runs(stack, "dist_quorum", 1)
            approval = stack.wait_for_approval("dist_quorum", run_id, "gate", states=["pending"], timeout=300)
            assert decide(stack, approval.id, "approve", user="alice", server=0).status_code == 200
            assert seen_by_dave() == (True, "carol")

            # Viewer first: FAB's CLI keeps a user in at least one role.
            roles(["add-role", "--role", "Viewer"], ["remove-role", "--role", "Op"])
            # The very first vote after the demotion must be refused: a 200 here would have counted
            # (and, as the second of two, approved the gate), so there is nothing to wait for.
            for server in (0, 1):
                refused = for_carol(server)
                assert refused.status_code == 403, f"api-server {server}: {refused.status_code} {refused.text}"
                assert refused.json()["detail"] == (
                    "carol may not decide it now: carol does not have edit access to DAG 'dist_quorum'"
                )
            assert seen_by_dave() == (False, None)
            kept = stack.api("GET", f"/hitl/api/v1/approvals/{approval.id}", user="admin", server=1).json()
            votes = [(v["user"], v["delegate"]) for v in kept["votes"]]
            assert (kept["state"], votes) == ("pending", [("alice", None)])
            assert [e.event_type for e in stack.manager.audit.events(approval.id)].count("vote") == 1

            roles(["add-role", "--role", "Op"], ["remove-role", "--role", "Viewer"])
            # A refusal records nothing, so waiting for the api-server to see her role back is safe.
            counted = wait_until(counted_for_carol, timeout=120, what="carol's restored Op role to reach api-server 1")
            assert counted.status_code == 200, counted.text
            votes = [(v["user"], v["delegate"]) for v in counted.json()["votes"]]
            assert (counted.json()["state"], votes) == ("approved", [("alice", None), ("carol", "dave")])
            assert_resumed_once(stack, "dist_quorum", run_id)
        finally:
            stack.api("DELETE", f"{self.DELEGATIONS}/{created['id']}", server=0, expect=(204,))


class TestSqliteFallbackRefused:
    def test_gate_without_hitl_default_fails_naming_the_connection(self, stack: AirflowHarness) -> None:
        """Under CeleryExecutor a missing ``hitl_default`` must not fall back to a per-host SQLite file."""
        dag_id = "dist_no_store"
        stack.api("DELETE", "/api/v2/connections/hitl_default", expect=(204,))
        try:
            [run_id] = trigger_runs(stack, dag_id, 1)
            # "At once": the gate must fail rather than defer to a store other hosts cannot see.
            gate = stack.wait_for_ti_state(dag_id, run_id, "gate", ("failed", "deferred"), timeout=300)
        finally:
            stack.create_store_connection()
        assert gate["state"] == "failed"
        assert stack.wait_for_run_state(dag_id, run_id, "failed")["state"] == "failed"
        assert "hitl_default" in stack.task_logs(dag_id, run_id, "gate", lines=400)
        assert stack.approvals(dag_id, run_id) == []


class TestEmailedLinkForFabUser:
    # Notices go out from the api-server's outbox, which has FAB's auth manager and so the email.
    def test_link_sent_to_the_fab_users_email_decides(self, stack: AirflowHarness, smtp: MailServer) -> None:
        dag_id = "dist_email"
        [run_id] = trigger_runs(stack, dag_id, 1)
        approval = stack.wait_for_approval(dag_id, run_id, "gate", states=["pending"], timeout=300)

        def notice_settled() -> Any:
            notices = stack.manager.notices.list_notifications(request_id=approval.id)
            settled = [n for n in notices if n.channel == "email" and n.status in {"sent", "failed"}]
            return settled or None

        [notice] = wait_until(notice_settled, timeout=300, what="the email notice to be sent or to fail")
        assert (notice.recipient, notice.status) == ("alice", "sent"), notice
        mail = wait_until(lambda: next(iter(smtp.sink.to("alice@example.com")), None), timeout=60, what="alice's email")
        text_part = mail.get_body(("plain",)).get_content()
        links = find_links(stack.base_url, text_part)
        assert links, text_part
        with httpx.Client(base_url=stack.base_urls[1], timeout=60, trust_env=False) as browser:
            _, done = submit_link(browser, links[0], comment="by email")
            assert done.status_code == 200, done.text
        decided = stack.manager.queries.get(approval.id)
        assert decided.state == "approved"
        assert [(v.user, v.source) for v in decided.votes] == [("alice", "email")]
        assert_resumed_once(stack, dag_id, run_id)


class TestTriggererCrash:
    MANUAL = 4
    TIMED = 2

    def _triggers_by_job(self, stack: AirflowHarness, run_ids: dict[str, list[str]]) -> dict[int, list[str]]:
        engine = create_engine(stack.metadata_db_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT ti.run_id, t.triggerer_id FROM task_instance ti JOIN trigger t ON ti.trigger_id = t.id"
                        " WHERE ti.dag_id IN ('dist_takeover', 'dist_takeover_timeout') AND ti.task_id = 'gate'"
                    )
                ).all()
        finally:
            engine.dispose()
        wanted = {run_id for ids in run_ids.values() for run_id in ids}
        by_job: dict[int, list[str]] = {}
        for run_id, job_id in rows:
            if run_id in wanted and job_id is not None:
                by_job.setdefault(int(job_id), []).append(run_id)
        return by_job

    def test_sigkilled_triggerer_is_taken_over(self, stack: AirflowHarness) -> None:
        run_ids = {
            "dist_takeover": trigger_runs(stack, "dist_takeover", self.MANUAL),
            "dist_takeover_timeout": trigger_runs(stack, "dist_takeover_timeout", self.TIMED),
        }
        total = self.MANUAL + self.TIMED

        def all_running() -> dict[int, list[str]] | None:
            found = self._triggers_by_job(stack, run_ids)
            return found if sum(map(len, found.values())) == total else None

        by_job = wait_until(
            all_running,
            timeout=400,
            what="every gate's trigger to run in a triggerer",
        )
        # Kill the triggerer that runs the most of them.
        victim_job = max(by_job, key=lambda job: len(by_job[job]))
        [victim] = [name for name, job in stack.triggerer_jobs.items() if job == victim_job]
        [survivor_job] = [job for job in stack.triggerer_jobs.values() if job != victim_job]
        process = stack.processes.pop(victim)
        os.killpg(process.pid, signal.SIGKILL)
        process.popen.wait(timeout=30)
        process.stop()

        # Decisions made while the triggers have nobody to run them.
        for i, run_id in enumerate(run_ids["dist_takeover"]):
            approval = stack.wait_for_approval("dist_takeover", run_id, "gate", states=["pending"])
            response = decide(stack, approval.id, "approve", user="alice", server=i % 2, comment="during the crash")
            assert response.status_code == 200, response.text

        for run_id in run_ids["dist_takeover"]:
            assert_resumed_once(stack, "dist_takeover", run_id)
        for run_id in run_ids["dist_takeover_timeout"]:
            assert_resumed_once(stack, "dist_takeover_timeout", run_id)
            [approval] = stack.approvals("dist_takeover_timeout", run_id, "gate")
            assert (approval.state, approval.decision, approval.decision_source) == ("timeout", "approved", "timeout")
        alive = {job["id"] for job in stack.alive_triggerers()}
        assert victim_job not in alive
        assert survivor_job in alive
