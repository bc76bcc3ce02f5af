"""Auth with BRIDGE_API_TOKEN: Bearer, the sign-in cookie with CSRF, open routes."""

from conftest import free_port, wait_served
from helpers import Processes

TOKEN = "s3cret-token-for-tests"


def test_with_a_token_every_api_route_asks_for_it(start_server):
    server = start_server(BRIDGE_API_TOKEN=TOKEN)
    with server.client() as anonymous:
        # Given no credentials: the API says 401 in JSON, healthz and login stay open
        for path in ("/api/tasks", "/api/summary", "/api/stream", "/metrics", "/openapi.json"):
            refused = anonymous.get(path)
            assert refused.status_code == 401, path
            assert set(refused.json()) == {"error"}
        assert anonymous.post("/api/tasks", json={"id": "a"}).status_code == 401
        assert anonymous.get("/healthz").status_code == 200
        login = anonymous.get("/login")
        assert login.status_code == 200 and 'name="token"' in login.text
        # an HTML page sends the browser to sign in, keeping where it was going
        page = anonymous.get("/tasks/a%2Fb", follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=%2Ftasks%2Fa%252Fb"
        assert anonymous.get("/", follow_redirects=False).status_code == 303
    with server.client(headers={"Authorization": "Bearer wrong"}) as wrong:
        refused = wrong.get("/api/tasks")
        assert refused.status_code == 401 and TOKEN not in refused.text
    with server.client(headers={"Authorization": f"Bearer {TOKEN}"}) as bearer:
        assert bearer.post("/api/tasks", json={"id": "a"}).status_code == 201
        assert [t["id"] for t in bearer.get("/api/tasks").json()["tasks"]] == ["a"]


def test_sign_in_sets_cookies_and_state_changes_need_the_csrf_token(start_server):
    server = start_server(BRIDGE_API_TOKEN=TOKEN)
    with server.client() as browser:
        # A wrong token re-shows the page with an error
        wrong = browser.post("/login", data={"token": "nope", "next": "/tasks/x"})
        assert wrong.status_code == 401 and "wrong token" in wrong.text
        assert "bridge_session" not in browser.cookies
        # The right one sets both cookies and goes where it was asked (same site only)
        signed = browser.post(
            "/login", data={"token": TOKEN, "next": "/tasks/x"}, follow_redirects=False
        )
        assert signed.status_code == 303 and signed.headers["location"] == "/tasks/x"
        cookies = signed.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("bridge_session="))
        csrf_header = next(c for c in cookies if c.startswith("bridge_csrf="))
        assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/" in session
        assert "HttpOnly" not in csrf_header
        assert TOKEN not in session
        # Reads work by cookie
        assert browser.get("/api/tasks").status_code == 200
        # A state change by cookie without the CSRF header is refused, and changes nothing
        refused = browser.post("/api/tasks", json={"id": "a"})
        assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["error"]
        wrong_csrf = browser.post("/api/tasks", json={"id": "a"}, headers={"X-CSRF-Token": "x"})
        assert wrong_csrf.status_code == 403
        csrf = browser.cookies["bridge_csrf"]
        made = browser.post("/api/tasks", json={"id": "a"}, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201
        # Signing out clears them
        out = browser.post("/logout", follow_redirects=False)
        assert out.status_code == 303
        assert browser.get("/api/tasks").status_code == 401


def test_sign_in_never_redirects_off_site(start_server):
    server = start_server(BRIDGE_API_TOKEN=TOKEN)
    with server.client() as browser:
        for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
            signed = browser.post(
                "/login", data={"token": TOKEN, "next": target}, follow_redirects=False
            )
            assert signed.headers["location"] == "/", target


def test_the_token_can_come_from_a_file_and_allows_a_public_host(
    processes: Processes, bridge_env, tmp_path
):
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    port = free_port()
    env = {**bridge_env, "BRIDGE_API_TOKEN_FILE": str(secret)}
    process = processes.start("serve", "--host", "0.0.0.0", "--port", str(port), env=env)
    url = f"http://127.0.0.1:{port}"
    wait_served(url, processes, process)
    import httpx

    assert httpx.get(url + "/api/tasks").status_code == 401
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(url + "/api/tasks", headers=headers).status_code == 200
    # the token is never in the log of the process either
    Processes.stop(process)
    assert TOKEN not in processes.logs()


def test_without_a_token_no_auth_is_asked(api):
    assert api.get("/api/tasks").status_code == 200
    assert api.post("/api/tasks", json={"id": "a"}).status_code == 201


def test_without_a_token_no_other_site_may_call_it(api):
    # Given bridge serve without a token (loopback only) and a task
    assert api.post("/api/tasks", json={"id": "keep"}).status_code == 201
    # When a page on another site posts to it (a form, or fetch without a preflight)
    for path, body in [("/api/tasks/keep/cancel", b""), ("/api/tasks", b'{"id": "planted"}')]:
        answer = api.post(
            path,
            content=body,
            headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
        )
        # Then it is refused and nothing changes
        assert answer.status_code == 403, answer.text
        assert "cross-site" in answer.json()["error"]
    # And a page on a name rebound to this host is refused too (DNS rebinding)
    rebound = api.get("/api/tasks", headers={"Host": "evil.example"})
    assert rebound.status_code == 421 and "loopback" in rebound.json()["error"]
    # While the dashboard's own requests (a loopback Origin) still work
    own = api.post("/api/tasks/keep/cancel", headers={"Origin": str(api.base_url)})
    assert own.status_code == 200, own.text
    assert [t["id"] for t in api.get("/api/tasks").json()["tasks"]] == ["keep"]
    assert api.get("/healthz", headers={"Host": "evil.example"}).status_code == 200
