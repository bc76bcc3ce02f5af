"""External-task routes through a real ``bridge serve``: claim, heartbeat, complete, fail,
with the token on, and every error status they answer."""

TOKEN = "claims-test-token"


def test_an_agent_claims_heartbeats_and_completes_over_http(start_server):
    # Given a server that asks for a token, and two external tasks
    server = start_server(BRIDGE_API_TOKEN=TOKEN, BRIDGE_EXTERNAL_KINDS="agent")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with server.client(headers=auth) as api:
        created = api.post(
            "/api/tasks",
            json=[
                {"id": "review/1", "kind": "external", "priority": 2, "max_attempts": 2},
                {"id": "write", "kind": "agent", "payload": {"topic": "x"}},
            ],
        )
        assert created.status_code == 201, created.text
        # When a client without the token claims, it is refused and nothing is claimed
        with server.client() as anonymous:
            refused = anonymous.post("/api/claims", json={"worker": "intruder"})
            assert refused.status_code == 401 and "error" in refused.json()
        # When an agent claims, it gets the higher-priority task, its attempt and a lease
        claimed = api.post("/api/claims", json={"worker": "agent-7"})
        assert claimed.status_code == 200, claimed.text
        body = claimed.json()
        assert body["task"]["id"] == "review/1" and body["task"]["status"] == "working"
        assert body["attempt"] == 1 and body["lease_expires_at"]
        # And a heartbeat extends the lease (the id reached URL-encoded or not)
        beat = api.post("/api/claims/review%2F1/heartbeat", json={"attempt": 1})
        assert beat.status_code == 200, beat.text
        assert beat.json()["lease_expires_at"] >= body["lease_expires_at"]
        assert api.post("/api/claims/review/1/heartbeat", json={"attempt": 2}).status_code == 409
        # When it completes, the task is done with the output
        done = api.post("/api/tasks/review/1/complete", json={"attempt": 1, "output": [1, "a"]})
        assert done.status_code == 200, done.text
        assert done.json()["task"]["status"] == "done"
        assert done.json()["task"]["output"] == [1, "a"]
        # And a duplicate completion is refused, saying so, and changes nothing
        again = api.post("/api/tasks/review/1/complete", json={"attempt": 1, "output": "b"})
        assert again.status_code == 409
        assert again.json()["error"].startswith("stale attempt 1 of task 'review/1'")
        assert api.get("/api/tasks/review/1").json()["output"] == [1, "a"]
        # When only the configured kind is asked for, it is claimed; then nothing is left
        other = api.post("/api/claims", json={"worker": "agent-7", "kinds": ["agent"]})
        assert other.status_code == 200 and other.json()["task"]["payload"] == {"topic": "x"}
        empty = api.post("/api/claims", json={"worker": "agent-7"})
        assert empty.status_code == 204 and empty.content == b""
        # And an agent's failure with no attempts left fails the task
        failed = api.post("/api/tasks/write/fail", json={"attempt": 1, "error": "no source"})
        assert failed.status_code == 200, failed.text
        assert failed.json()["task"]["status"] == "failed"
        assert failed.json()["task"]["error"] == "no source"


def test_claim_routes_answer_400_404_and_409(api):
    assert api.post("/api/tasks", json=[{"id": "e", "kind": "external"}]).status_code == 201
    assert api.post("/api/tasks", json=[{"id": "rq", "kind": "echo"}]).status_code == 201
    cases = [
        ("/api/claims", {}, 400, "worker"),
        ("/api/claims", {"worker": ""}, 400, "worker"),
        ("/api/claims", {"worker": "w", "kinds": ["echo"]}, 400, "not external"),
        ("/api/claims", {"worker": "w", "colour": "red"}, 400, "colour"),
        ("/api/claims/nope/heartbeat", {"attempt": 1}, 404, "no task 'nope'"),
        ("/api/claims/e/heartbeat", {"attempt": "one"}, 400, "attempt"),
        ("/api/tasks/e/complete", {"attempt": 1}, 409, "stale attempt 1 of task 'e'"),
        ("/api/tasks/e/complete", {"attempt": 0}, 400, "attempt"),
        ("/api/tasks/nope/complete", {"attempt": 1}, 404, "no task 'nope'"),
        ("/api/tasks/e/fail", {"attempt": 1}, 400, "error"),
        ("/api/tasks/rq/fail", {"attempt": 1, "error": "x"}, 409, "not an external task"),
    ]
    for path, body, status, message in cases:
        answer = api.post(path, json=body)
        assert answer.status_code == status, (path, body, answer.text)
        assert message in answer.json()["error"], (path, answer.json())
    # Nothing above changed a task: both are still waiting
    assert api.get("/api/tasks/e").json()["status"] == "available"
    assert api.get("/api/tasks/rq").json()["attempts"] == 0


def test_a_claim_body_is_read_as_json_whatever_its_content_type(api):
    # Given an external task
    assert api.post("/api/tasks", json=[{"id": "e", "kind": "external"}]).status_code == 201
    # When an agent posts its JSON as `curl -d` does (form-encoded) or with no type at all
    claimed = api.post(
        "/api/claims",
        content=b'{"worker": "w"}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    # Then it is read as JSON, like POST /api/tasks
    assert claimed.status_code == 200, claimed.text
    attempt = claimed.json()["attempt"]
    beat = api.post("/api/claims/e/heartbeat", content=f'{{"attempt": {attempt}}}'.encode())
    assert beat.status_code == 200, beat.text
    done = api.post(
        "/api/tasks/e/complete",
        content=f'{{"attempt": {attempt}, "output": 1}}'.encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert done.status_code == 200 and done.json()["task"]["output"] == 1, done.text
    # And a body that is not JSON is one line saying so
    bad = api.post("/api/claims", content=b"worker=w")
    assert bad.status_code == 400 and bad.json() == {"error": "the body is not valid JSON"}
