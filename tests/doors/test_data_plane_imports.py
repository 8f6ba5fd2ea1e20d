"""A worker of `lgsp serve` holds neither connexion nor Flask (~20 MiB) until a request needs them, and
never zeep (its population templates are rendered by zeep in a child process at start-up).

Its own pages, the token endpoint, the SOAP door and the fast path's reads are served without them; the
first request the fast path declines builds connexion's app, and is refused exactly as before. What a
real worker process has loaded is read from outside, in /proc/<pid>/maps: Jinja2 and Werkzeug (which
connexion and Flask import) load MarkupSafe's C module, and nothing else a worker imports does; zeep
loads requests, whose charset_normalizer is a C module, and nothing else a worker imports does.
"""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import httpx
import pytest
from helpers import free_port, get_token, start_server, wait_for_config
from test_rest_door_fast_path import PURPOSE, reader  # noqa: F401 - reader: a fixture, a token granted every fast-path read

PERSON = "/api/population/v1/citizens/001085012345"
MARKER = "markupsafe/_speedups"
ZEEP_MARKER = "charset_normalizer/"


def workers(pid: int) -> list[int]:
    """uvicorn's worker processes under the supervisor `pid` (the supervisor also checks the schema:
    alembic, which loads MarkupSafe, runs there, not in the workers)."""
    children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def loaded(pid: int, marker: str = MARKER) -> list[bool]:
    """For each worker: whether it has MarkupSafe's C module (so Jinja2 or Werkzeug) mapped, or `marker`'s."""
    return [marker in Path(f"/proc/{w}/maps").read_text() for w in workers(pid)]


@pytest.fixture(scope="module")
def lone_gateway(gateway, tmp_path_factory):
    """A fresh two-worker gateway (both planes, as `lgsp serve` runs) on the test gateway's database."""
    port = free_port()
    server = start_server([sys.executable, "-m", "lgsp.cli", "serve", "--port", str(port), "--workers", "2"],
                          f"http://127.0.0.1:{port}", "/readyz", tmp_path_factory.mktemp("gw") / "lone.log")
    yield server
    server.stop()


def _ask(base: str, token: str, purpose: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "X-Purpose": purpose, "X-On-Behalf-Of": "officer-7",
               "X-Request-ID": f"lean-{uuid.uuid4().hex[:12]}"}
    return httpx.get(base + PERSON, headers=headers, timeout=15)


def _comparable(resp: httpx.Response) -> tuple:
    body = {k: v for k, v in resp.json().items() if k not in ("request_id", "instance")}
    return resp.status_code, resp.headers["content-type"], body


def test_a_worker_serves_its_pages_and_fast_reads_without_connexion(gateway, lone_gateway, reader):  # noqa: F811
    pid = lone_gateway.proc.pid
    assert loaded(pid) == [False, False], "connexion or Flask loaded at start-up"
    wait_for_config(lone_gateway.url, gateway.extra["engine"])
    for page in ("/healthz", "/readyz", "/api", "/metrics"):
        assert httpx.get(lone_gateway.url + page, timeout=15).status_code == 200, page
    r = _ask(lone_gateway.url, reader, PURPOSE)
    assert r.status_code == 200, r.text
    assert r.json()  # the person's granted fields
    assert loaded(pid) == [False, False], "connexion or Flask loaded by a fast-path exchange"
    cid = f"lean-{uuid.uuid4().hex[:6]}"
    secret = gateway.extra["admin"].create_client(cid, "Lean worker", "000.00.37.H30")
    gateway.extra["admin"].add_grant(cid, "codelists.list", ["codelists"], ["reference-data"])
    for _ in range(4):  # on both workers, most likely
        assert get_token(lone_gateway, cid, secret)
    assert loaded(pid) == [False, False], "Flask loaded by a token request"
    assert loaded(pid, ZEEP_MARKER) == [False, False], "zeep loaded by a worker"

    # The fast path declines a malformed purpose: connexion is built, and refuses it as the test gateway does.
    declined = _ask(lone_gateway.url, reader, "Not A Purpose!")
    assert declined.status_code == 400, declined.text
    assert _comparable(declined) == _comparable(_ask(gateway.url, reader, "Not A Purpose!"))
    assert any(loaded(pid)), "the probe cannot see connexion's libraries"  # so the checks above were not blind


def test_the_gateway_pages_answer_every_method_as_before(gateway):
    """GET is answered without connexion; HEAD, a trailing slash and other methods still by connexion's
    routes for the pages (as when connexion served them all)."""
    from test_abuse import in_process_gateway

    with in_process_gateway() as url:
        assert httpx.get(url + "/healthz", timeout=15).json()["status"] == "ok"
        assert httpx.head(url + "/healthz", timeout=15).status_code == 200
        slash = httpx.get(url + "/readyz/", timeout=15)
        assert slash.status_code == 307 and slash.headers["location"].endswith("/readyz")
        refused = httpx.post(url + "/metrics", timeout=15)
        assert refused.status_code == 401  # the pipeline's refusal: no route takes POST, and no token came
        assert refused.headers["content-type"] == "application/problem+json"
