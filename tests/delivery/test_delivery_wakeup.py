"""Cross-process wake-up: on PostgreSQL a message accepted by a gateway process wakes a delivery
worker in another process by NOTIFY at once, not at its next poll (polling stays the fallback)."""
from __future__ import annotations

import os
import re

import httpx
import pytest
from delivery_rig import dossier, headers, make_rig, wait_until
from helpers import free_port, postgres_database

pytestmark = pytest.mark.skipif(not os.environ.get("LGSP_TEST_DATABASE_URL"),
                                reason="LISTEN/NOTIFY is PostgreSQL's (SQLite: one machine, a short poll)")


def _metric(url: str, name: str) -> float:
    try:
        text = httpx.get(f"{url}/metrics").text
    except httpx.ConnectError:  # the worker is still starting
        return -1.0
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_an_acceptance_wakes_a_worker_in_another_process_by_notify(tmp_path, lgsp_env):
    from lgsp.audit.writer import close_writers
    from lgsp.storage import engine_for, upgrade

    url, drop = postgres_database(os.environ["LGSP_TEST_DATABASE_URL"])
    upgrade(url)
    rig = make_rig(url, tmp_path)
    try:
        rig.start_gateway(worker_in_process=False)
        # The worker looks at the queue by itself only every 10 minutes: a delivery within seconds is NOTIFY's.
        worker = rig.start_worker(metrics_port=free_port(), LGSP_DELIVERY_POLL="600")
        wait_until(lambda: _metric(worker.url, "lgsp_delivery_listening") == 1, timeout=60, every=0.2)
        before = _metric(worker.url, "lgsp_delivery_notifications_total")
        token = rig.token()
        r = httpx.post(f"{rig.url}/api/portal/v1/dossiers", json=dossier("HS-NOTIFY-1"), headers=headers(token))
        assert r.status_code == 202, r.text
        status_url = r.json()["status_url"]
        wait_until(lambda: httpx.get(status_url, headers=headers(token)).json()["status"] == "delivered", timeout=30)
        assert _metric(worker.url, "lgsp_delivery_notifications_total") > before
        assert [m["dossier_no"] for m in rig.record()["applied"]] == ["HS-NOTIFY-1"]
    finally:
        rig.stop()
        close_writers()
        engine_for(url).dispose()
        drop()
