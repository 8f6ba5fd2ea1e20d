"""Shared fixtures: real servers on loopback (the gateway and the simulators).

The database is SQLite unless LGSP_TEST_DATABASE_URL names a PostgreSQL server,
in which case a fresh database is created for the session and dropped after.
"""
from __future__ import annotations

import functools
import inspect
import os
import secrets
import sys

import pytest
from helpers import (
    BUSINESS_TOKEN_TTL,
    Simulator,
    business_settings,
    free_port,
    postgres_database,
    start_server,
    wait_for_config,
)

# The simulators of the tests listen on loopback, which the egress policy refuses unless the
# operator allows it: this test process (and every server it starts) is that operator.
os.environ.setdefault("LGSP_EGRESS_ALLOW", "127.0.0.0/8,::1")


@pytest.fixture(scope="session")
def lgsp_env(tmp_path_factory) -> dict[str, str]:
    """Environment shared by the test process and every server it starts."""
    home = tmp_path_factory.mktemp("lgsp-home")
    pg = os.environ.get("LGSP_TEST_DATABASE_URL")
    drop = None
    if pg:
        url, drop = postgres_database(pg)
    else:
        url = f"sqlite:///{home / 'lgsp.db'}"
    port = free_port()
    env = {
        "LGSP_HOME": str(home),
        "LGSP_DATABASE_URL": url,
        "LGSP_SECRET_KEY": secrets.token_urlsafe(32),
        "LGSP_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "LGSP_CONFIG_POLL_SECONDS": "0.2",
        "LGSP_GATEWAY_PORT": str(port),
        # The simulators listen on loopback; the egress policy refuses it unless the operator allows it.
        "LGSP_EGRESS_ALLOW": "127.0.0.0/8,::1",
    }
    os.environ.update(env)
    from lgsp.config import settings

    settings.cache_clear()
    from lgsp.storage import upgrade

    upgrade(url)
    yield env
    from lgsp.audit.writer import close_writers

    close_writers()  # their shutdown seals go in before the database is dropped
    if drop:
        from lgsp.storage import engine_for

        engine_for(url).dispose()
        drop()


@pytest.fixture
def fresh_db_url(lgsp_env, tmp_path):
    """A new, migrated database of its own (SQLite file, or a new PostgreSQL database)."""
    from lgsp.storage import engine_for, upgrade

    pg = os.environ.get("LGSP_TEST_DATABASE_URL")
    drop = None
    if pg:
        url, drop = postgres_database(pg)
    else:
        url = f"sqlite:///{tmp_path / 'own.db'}"
    upgrade(url)
    yield url
    from lgsp.audit.writer import close_writers

    close_writers()
    engine_for(url).dispose()
    if drop:
        drop()


@pytest.fixture(scope="session")
def population_sim(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("sim") / "population-sim.log"
    server = start_server(
        [sys.executable, "-m", "lgsp_adapters.population.simulator", "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}", "/_sim/faults", log,
    )
    yield server
    server.stop()


@pytest.fixture
def faults(population_sim):
    sim = Simulator(population_sim)
    yield sim
    sim.set("normal")


@pytest.fixture(scope="session")
def gateway(lgsp_env, population_sim, tmp_path_factory):
    from lgsp import keys
    from lgsp.config import settings
    from lgsp.control.admin import Admin
    from lgsp.storage import engine_for

    engine = engine_for(settings().db_url)
    admin = Admin(engine, "tests")
    admin.register_spec_services()
    keys.ensure_key(engine)
    admin.set_connection("population", "population", {
        "endpoint": f"{population_sim.url}/dancu", "timeout": 2,
        "integration_code": "LGSP-TEST", "account": "lgsp-test", "agency_code": "000.00.00.H30",
    })
    port = lgsp_env["LGSP_GATEWAY_PORT"]
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    server = start_server(
        [sys.executable, "-m", "lgsp.cli", "serve", "--port", port],
        f"http://127.0.0.1:{port}", "/readyz", log,
    )
    server.extra["admin"] = admin
    server.extra["engine"] = engine
    yield server
    server.stop()


# -- the business registration simulator and its connection ------------------------------

@pytest.fixture(scope="session")
def business_sim(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("sim") / "business-sim.log"
    client = ("lgsp-test", secrets.token_urlsafe(16))
    server = start_server(
        [sys.executable, "-m", "lgsp_adapters.business.simulator", "--host", "127.0.0.1", "--port", str(port),
         "--client-id", client[0], f"--client-secret={client[1]}", "--token-ttl", str(BUSINESS_TOKEN_TTL)],
        f"http://127.0.0.1:{port}", "/_sim/faults", log,
    )
    server.extra["client"] = client
    yield server
    server.stop()


@pytest.fixture(scope="session")
def business_gateway(gateway, business_sim):
    """The shared gateway with the `business` connection and the services of the specs."""
    admin = gateway.extra["admin"]
    admin.register_spec_services()
    admin.set_connection("business", "business", business_settings(business_sim))
    wait_for_config(gateway.url, gateway.extra["engine"])
    return gateway


# -- the integration marker -----------------------------------------------------------------

# A test is `integration` when it uses one of these fixtures (directly or through another), or
# when its own code or one of its fixtures' starts a server, a subprocess or a database of its own.
# The others are pure and make the inner loop: pytest -m "not integration".
INTEGRATION_FIXTURES = frozenset({
    "lgsp_env", "fresh_db_url", "population_sim", "faults", "gateway", "business_sim", "business_gateway",
})
INTEGRATION_CALLS = ("serve_in_thread(", "start_server(", "lgsp_cli(", "postgres_database(", "subprocess.",
                     "engine_for(", "upgrade(", "multiprocessing", "ProcessPool")


@functools.cache
def _runs_something_real(func) -> bool:
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        return False
    return any(call in source for call in INTEGRATION_CALLS)


def _is_integration(item: pytest.Item) -> bool:
    if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    funcs = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    if info is not None:
        funcs += [d.func for defs in info.name2fixturedefs.values() for d in defs if "_pytest" not in d.func.__module__]
    return any(f is not None and _runs_something_real(f) for f in funcs)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_integration(item):
            item.add_marker(pytest.mark.integration)


# -- the national public-service portal simulator and its connection ------------------------

PORTAL_ACCOUNT = {"dstcode": "DVCQG-H30-TEST", "madonvi": "000.00.00.H30", "username": "lgsp-test"}


@pytest.fixture(scope="session")
def portal_sim(tmp_path_factory):
    """The portal simulator on loopback; ``extra["settings"]`` are the `portal` connection's settings."""
    port = free_port()
    password = secrets.token_urlsafe(16)
    log = tmp_path_factory.mktemp("sim") / "portal-sim.log"
    server = start_server(
        [sys.executable, "-m", "lgsp_adapters.portal.simulator", "--host", "127.0.0.1", "--port", str(port),
         *[f"--{k}={v}" for k, v in PORTAL_ACCOUNT.items()], f"--password={password}"],
        f"http://127.0.0.1:{port}", "/_sim/faults", log,
    )
    server.extra["settings"] = {"endpoint": f"{server.url}/dvcqg/api", **PORTAL_ACCOUNT, "password": password,
                                "timeout": 1}
    yield server
    server.stop()
