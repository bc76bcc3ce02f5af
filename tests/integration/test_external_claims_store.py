"""External tasks in the store and the use cases, on SQLite and PostgreSQL: claims,
leases, fencing, cancel, and how the dispatcher's queries leave claims alone.

No Redis (a closed port): the database part of each use case alone; a claim never
needs Redis.
"""

import threading
import time

import pytest
from helpers import query

from bridge import graph, store, usecases
from bridge.settings import Settings

pytestmark = pytest.mark.both_backends

DEAD_REDIS = "redis://127.0.0.1:1/0"


def spec(task_id: str, **options) -> graph.TaskSpec:
    return graph.make_spec(task_id=task_id, **options)


@pytest.fixture
def app(db_url: str):
    app = usecases.App(
        Settings(database_url=db_url, redis_url=DEAD_REDIS, external_kinds=("agent",)),
        create=True,
    )
    yield app
    app.close()


def short_lease(app: usecases.App, seconds: float = 0.2) -> usecases.App:
    return usecases.App(app.settings.with_(claim_ttl=seconds), engine=app.engine)


def expire(app: usecases.App) -> list[store.Applied]:
    with store.writing(app.engine) as session:
        return store.expire_claims(session=session)


def dispatch(app: usecases.App) -> list[str]:
    """What a dispatcher starting now would send to RQ (its slots rebuilt first)."""
    with store.writing(app.engine) as session:
        store.reset_slots(session=session, slots=5)
        dispatched = store.claim_ready(
            session=session, slots=5, exclude_kinds=app.settings.all_external_kinds
        )
    return [d.task_id for d in dispatched]


def task(app: usecases.App, task_id: str) -> dict:
    return usecases.show_task(app, task_id).to_dict()


def events(db_url: str, task_id: str) -> list[tuple]:
    return query(
        db_url,
        "SELECT from_status, to_status, attempt, detail FROM task_events"
        " WHERE task_id = ? ORDER BY id",
        task_id,
    )


# ---------------------------------------------------------------------- claiming


def test_a_claim_takes_the_highest_priority_ready_external_task(app, db_url):
    # Given external tasks of two priorities, a blocked one, and an RQ task
    usecases.add(
        app,
        [
            spec("low", kind="external"),
            spec("high", kind="agent", priority=5),
            spec("blocked", kind="external", priority=9, dependencies=["rq"]),
            spec("rq", kind="echo", priority=10),
        ],
    )
    assert task(app, "high")["why"] == "ready: waiting for an agent to claim it (bridge claim)"
    # When an agent claims
    claimed = usecases.claim(app, worker="agent-1")
    # Then it gets the ready external task of highest priority, working on attempt 1
    assert claimed is not None
    assert claimed.task["id"] == "high" and claimed.attempt == 1
    assert claimed.task["status"] == "working" and claimed.task["worker"] == "agent-1"
    namespace = usecases.App(app.settings, engine=app.engine).namespace
    assert claimed.task["job_id"].startswith(f"external-{namespace}-t")
    assert claimed.lease_expires_at == task(app, "high")["claim_expires_at"]
    assert events(db_url, "high")[-1][:3] == ("available", "working", 1)
    # And the next claim gets the other; then there is nothing (never the RQ task)
    assert usecases.claim(app, worker="agent-1").task["id"] == "low"
    assert usecases.claim(app, worker="agent-1") is None


def test_each_claim_carries_a_fresh_fencing_token(app):
    usecases.add(app, [spec("a", kind="external"), spec("b", kind="external")])
    first = usecases.claim(app, worker="w").task["job_id"]
    second = usecases.claim(app, worker="w").task["job_id"]
    assert first != second
    assert int(second.rsplit("-t", 1)[1]) > int(first.rsplit("-t", 1)[1])


def test_a_claim_of_a_kind_that_is_not_external_is_refused(app):
    usecases.add(app, [spec("rq", kind="echo")])
    with pytest.raises(usecases.ClaimError, match="'echo' are not external"):
        usecases.claim(app, worker="w", kinds=["echo"])
    assert task(app, "rq")["status"] == "available"


def test_a_claim_can_ask_for_one_kind(app):
    usecases.add(app, [spec("e", kind="external", priority=3), spec("g", kind="agent")])
    assert usecases.claim(app, worker="w", kinds=["agent"]).task["id"] == "g"


def test_a_claim_needs_a_worker_name(app):
    with pytest.raises(usecases.ClaimError, match="worker name"):
        usecases.claim(app, worker="  ")


def test_two_claimers_never_get_the_same_task(app):
    # Given many ready external tasks
    usecases.add(app, [spec(f"t{n}", kind="external") for n in range(24)])
    got: list[str] = []
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            while (claimed := usecases.claim(app, worker=name)) is not None:
                got.append(claimed.task["id"])
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    # When four claimers race for them
    threads = [threading.Thread(target=claimer, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    # Then every task was claimed exactly once
    assert not errors, errors
    assert sorted(got) == sorted(f"t{n}" for n in range(24))


# ---------------------------------------------------------------------- the dispatcher's side


def test_the_dispatcher_never_claims_an_external_task(app):
    usecases.add(app, [spec("ext", kind="external", priority=9), spec("own", kind="agent")])
    usecases.add(app, [spec("rq", kind="echo")])
    assert dispatch(app) == ["rq"]
    assert task(app, "ext")["status"] == "available"


def test_reconciliation_and_slots_leave_a_claimed_task_alone(app):
    # Given a claimed external task and an RQ task in flight
    usecases.add(app, [spec("ext", kind="external"), spec("rq", kind="echo")])
    usecases.claim(app, worker="w")
    assert dispatch(app) == ["rq"]
    # When the dispatcher rebuilds its slots and lists what to reconcile
    with store.writing(app.engine) as session:
        rebuilt = store.reset_slots(session=session, slots=5)
    with store.reading(app.engine) as session:
        flights = [f.task_id for f in store.in_flight(session=session)]
    # Then only the RQ task holds a slot and is judged against Redis
    assert rebuilt == ["rq"] and flights == ["rq"]
    assert sorted(s.task_id for s in usecases.list_slots(app) if s.active) == ["rq"]


# ---------------------------------------------------------------------- completing


def test_complete_finishes_the_claim_and_unblocks_dependents(app, db_url):
    usecases.add(app, [spec("ext", kind="external"), spec("next", dependencies=["ext"])])
    claimed = usecases.claim(app, worker="w")
    done = usecases.complete(app, "ext", claimed.attempt, {"answer": 42})
    assert done["status"] == "done" and done["output"] == {"answer": 42}
    assert task(app, "next")["pending_dependencies"] == 0


def test_a_duplicate_completion_is_refused_and_changes_nothing(app, db_url):
    usecases.add(app, [spec("ext", kind="external")])
    claimed = usecases.claim(app, worker="w")
    usecases.complete(app, "ext", claimed.attempt, "first")
    # When the same attempt completes again
    with pytest.raises(usecases.StaleAttempt, match="stale attempt 1 of task 'ext'.*already"):
        usecases.complete(app, "ext", claimed.attempt, "second")
    # Then the first output stands, and the refusal is recorded as ignored
    assert task(app, "ext")["output"] == "first"
    assert events(db_url, "ext")[-1][:2] == ("done", "done")
    assert events(db_url, "ext")[-1][3].startswith("ignored:")


def test_fail_retries_while_attempts_remain_then_fails(app):
    usecases.add(app, [spec("ext", kind="external", max_attempts=2)])
    first = usecases.claim(app, worker="w")
    retried = usecases.fail(app, "ext", first.attempt, "could not reach the API")
    assert retried["status"] == "available" and retried["not_before"] is not None
    assert retried["error"] == "could not reach the API"
    query_db = app.settings.database_url
    query(query_db, "UPDATE tasks SET not_before = NULL WHERE id = ?", "ext")  # skip backoff
    second = usecases.claim(app, worker="w")
    assert second.attempt == 2
    assert usecases.fail(app, "ext", 2, "still down")["status"] == "failed"


def test_complete_of_a_task_run_by_rq_is_refused(app):
    usecases.add(app, [spec("rq", kind="echo")])
    assert dispatch(app) == ["rq"]
    with pytest.raises(usecases.StaleAttempt, match="not an external task"):
        usecases.complete(app, "rq", 1, None)
    assert task(app, "rq")["status"] == "queued"


def test_complete_of_an_unknown_task_is_a_task_error(app):
    with pytest.raises(store.TaskStateError, match="no task 'nope'"):
        usecases.complete(app, "nope", 1, None)


# ---------------------------------------------------------------------- leases


def test_a_heartbeat_extends_the_lease_of_the_live_attempt_only(app):
    usecases.add(app, [spec("ext", kind="external")])
    claimed = usecases.claim(short_lease(app, 30), worker="w")
    later = usecases.heartbeat(app, "ext", claimed.attempt)  # the app's TTL: 60 s
    assert later > claimed.lease_expires_at
    assert task(app, "ext")["claim_expires_at"] == later
    with pytest.raises(usecases.StaleAttempt, match="stale attempt 2 of task 'ext'"):
        usecases.heartbeat(app, "ext", 2)


def test_a_lapsed_claim_is_failed_as_lost_and_retried_then_failed(app, db_url):
    # Given an external task with two attempts, claimed with a short lease
    fast = short_lease(app)
    usecases.add(app, [spec("ext", kind="external", max_attempts=2)])
    first = usecases.claim(fast, worker="w")
    assert expire(app) == []  # not lapsed yet
    # When the lease lapses without a heartbeat
    time.sleep(0.4)
    lapsed = expire(app)
    # Then the attempt failed as lost, and the task waits for its retry
    assert [a.report.task_id for a in lapsed] == ["ext"]
    shown = task(app, "ext")
    assert shown["status"] == "available" and shown["failures"] == 1
    assert shown["error"].startswith("WorkerLost: the claim of attempt 1 by w lapsed")
    # And a heartbeat or completion of that attempt is refused
    with pytest.raises(usecases.StaleAttempt):
        usecases.heartbeat(app, "ext", first.attempt)
    query(db_url, "UPDATE tasks SET not_before = NULL WHERE id = ?", "ext")  # skip backoff
    second = usecases.claim(fast, worker="w2")
    assert second.attempt == 2
    with pytest.raises(usecases.StaleAttempt, match="the task is at attempt 2"):
        usecases.complete(app, "ext", first.attempt, "late")
    # When the second claim lapses too, no attempts are left: failed
    time.sleep(0.4)
    assert len(expire(app)) == 1
    assert task(app, "ext")["status"] == "failed"


def test_a_heartbeat_keeps_a_claim_from_lapsing(app):
    usecases.add(app, [spec("ext", kind="external")])
    claimed = usecases.claim(short_lease(app, 0.5), worker="w")
    for _ in range(4):
        time.sleep(0.2)
        usecases.heartbeat(short_lease(app, 0.5), "ext", claimed.attempt)
        assert expire(app) == []
    assert task(app, "ext")["status"] == "working"


# ---------------------------------------------------------------------- cancel


def test_cancel_while_claimed_refuses_the_later_completion(app):
    # Given a claimed external task (and no Redis at all)
    usecases.add(app, [spec("ext", kind="external")])
    claimed = usecases.claim(app, worker="w")
    # When it is cancelled
    result = usecases.cancel(app, "ext")
    # Then no Redis was asked (no warning about it) and the claim is revoked
    assert result.warnings == [] and "claim is revoked" in (result.job or "")
    # And the agent's completion is refused, its heartbeat too
    with pytest.raises(usecases.StaleAttempt, match="the task is cancelled"):
        usecases.complete(app, "ext", claimed.attempt, "too late")
    with pytest.raises(usecases.StaleAttempt):
        usecases.heartbeat(app, "ext", claimed.attempt)
    assert task(app, "ext")["status"] == "cancelled"
    assert expire(app) == []
