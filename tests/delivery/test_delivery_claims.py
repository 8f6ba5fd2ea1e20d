"""How a delivery worker looks at the queue: a burst of acceptances is taken in a few claims (the
gather window), not one claim per message; a worker-plane process can run at a lower CPU priority."""
from __future__ import annotations

import os
import re
import time

import httpx
import pytest
from delivery_rig import dossier, headers, running_rig, wait_until
from helpers import free_port
from sqlalchemy import func, select

from lgsp.storage import engine_for
from lgsp.storage.schema import delivery_messages as M

BURST = 40


@pytest.fixture
def rig(tmp_path, lgsp_env):
    with running_rig(tmp_path, "claims", worker_in_process=False) as made:  # the only worker is each test's own
        yield made


def _claims(url: str, taken: str) -> float:
    try:
        text = httpx.get(f"{url}/metrics").text
    except httpx.ConnectError:  # still starting
        return -1.0
    found = re.search(rf'^lgsp_delivery_claims_total\{{taken="{taken}"\}} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _delivered(rig) -> int:
    with engine_for(rig.db_url).connect() as conn:
        return conn.execute(select(func.count()).select_from(M).where(M.c.status == "delivered")).scalar() or 0


def test_a_stream_of_acceptances_is_taken_in_a_few_claims(rig):
    # A long gather window: every acceptance (PostgreSQL's notification) and every finished delivery
    # wakes the worker, but it looks at the queue at most once a second (and at each poll).
    worker = rig.start_worker(metrics_port=free_port(), LGSP_DELIVERY_CONCURRENCY="64",
                              LGSP_DELIVERY_POLL="1", LGSP_DELIVERY_GATHER="1")
    wait_until(lambda: _claims(worker.url, "no") >= 1, timeout=60, every=0.2)
    token = rig.token()
    before, started = _claims(worker.url, "yes") + _claims(worker.url, "no"), time.monotonic()
    with httpx.Client(timeout=30) as http:
        for n in range(BURST):  # a stream, one after the other: messages arrive while others are delivered
            r = http.post(f"{rig.url}/api/portal/v1/dossiers", json=dossier(f"HS-STREAM-{n}"), headers=headers(token))
            assert r.status_code == 202, r.text
    wait_until(lambda: _delivered(rig) == BURST, timeout=60)
    looks = _claims(worker.url, "yes") + _claims(worker.url, "no") - before
    seconds = time.monotonic() - started
    # One look per second at most (the window, the poll), and one at each end.
    assert looks <= seconds + 2, f"{looks} looks at the queue in {seconds:.1f} s for {BURST} messages"
    record = rig.record()
    assert record["duplicates"] == 0 and len(record["applied"]) == BURST


def test_a_worker_plane_process_runs_at_the_priority_it_is_given(rig):
    worker = rig.start_worker(metrics_port=free_port(), LGSP_DELIVERY_NICE="7")
    wait_until(lambda: _claims(worker.url, "no") >= 0, timeout=60, every=0.2)
    assert os.getpriority(os.PRIO_PROCESS, worker.proc.pid) == min(os.getpriority(os.PRIO_PROCESS, 0) + 7, 19)
    r = httpx.post(f"{rig.url}/api/portal/v1/dossiers", json=dossier("HS-NICE-1"), headers=headers(rig.token()))
    assert r.status_code == 202
    wait_until(lambda: _delivered(rig) == 1, timeout=30)  # lower priority, not starved: it still delivers
