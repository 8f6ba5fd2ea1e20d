"""A worker of `lgsp serve` (both planes) holds the control plane (Flask app, authlib, console, admin and
audit APIs) only once a control-plane request has come: a worker that serves exchanges only never loads it."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import httpx

from lgsp.app import built_on_first_request

# What a worker process does: the spawned worker re-imports lgsp.cli, then uvicorn calls the factory.
PROBE = """
import asyncio, json, sys, warnings
warnings.simplefilter("ignore")
import lgsp.cli, lgsp.app
import httpx

CONTROL = ("lgsp.control.plane", "lgsp.control.console", "lgsp.control.admin_api", "lgsp.audit.api", "authlib",
           "lgsp.control.token_endpoint", "connexion", "flask", "werkzeug")

def loaded():
    return sorted(m for m in sys.modules if m.startswith(CONTROL))

app = lgsp.app.combined()
before = loaded()

async def ask(path, **form):
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        asking = client.post(path, data=form, auth=("nobody", "wrong")) if form else client.get(path)
        return (await asking).status_code

token = asyncio.run(ask("/oauth/token", grant_type="client_credentials"))
after_token = loaded()
statuses = [token, asyncio.run(ask("/console/login")), asyncio.run(ask("/.well-known/oauth-authorization-server"))]
print(json.dumps({"before": before, "after_token": after_token, "after": loaded(), "statuses": statuses}))
"""


def test_worker_loads_the_control_plane_on_its_first_request(lgsp_env):
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["before"] == []  # none of the control plane's modules (nor connexion) after the app factory
    # A token request (here a wrong client: 401) builds the token endpoint alone: authlib, not Flask.
    assert {"lgsp.control.token_endpoint", "authlib"} <= set(seen["after_token"])
    assert not {"lgsp.control.plane", "lgsp.control.console", "connexion", "flask", "werkzeug"} & set(
        seen["after_token"])
    assert seen["statuses"] == [401, 200, 200]  # the token, the console's sign-in page, the OAuth metadata
    assert {"lgsp.control.plane", "lgsp.control.console", "authlib", "flask"} <= set(seen["after"])


def test_concurrent_first_requests_build_the_plane_once():
    builds = []
    gate = threading.Event()

    def build():
        builds.append(1)
        gate.wait(5)  # a slow build (imports, specs): the other requests arrive meanwhile

        async def plane(scope, receive, send):
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        return plane

    app = built_on_first_request(build)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lgsp") as client:
            asking = [asyncio.create_task(client.get("/console")) for _ in range(5)]
            await asyncio.sleep(0.2)
            gate.set()
            return [r.status_code for r in await asyncio.gather(*asking)]

    assert asyncio.run(main()) == [204] * 5
    assert len(builds) == 1


SECRET_CHECKS = """
import json, threading
from lgsp import secret_check

def rss_mib():
    return next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))

stored = secret_check.dummy_hash()
secret_check.check("a wrong secret", stored)  # the first check of each pool thread
before = rss_mib()
threads = [threading.Thread(target=secret_check.check, args=("a wrong secret", stored)) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"before": before, "after": rss_mib()}))
"""


def test_secret_checks_give_their_work_area_back():
    """scrypt needs 8 MiB per check (16 MiB for hashes made before 2026-12-01); once checks are over, the
    worker's resident memory is what it was (glibc would otherwise keep the area in its heap from the
    second check on, per checking thread)."""
    out = subprocess.run([sys.executable, "-c", SECRET_CHECKS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["after"] - seen["before"] < 4, seen
