"""The `lgsp` command."""
from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import click

# Ids a database row can have (audit records: 64-bit; grants: a 32-bit column on PostgreSQL): a larger one is
# a usage error, not an overflow in the driver.
DATABASE_ID = click.IntRange(1, 2**63 - 1)
GRANT_ID = click.IntRange(1, 2**31 - 1)

# connexion imports Starlette's test client at start-up, which warns about httpx on every command.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")


def _engine(*, require_schema: bool = True):
    from lgsp.config import settings
    from lgsp.storage import engine_for

    engine = engine_for(settings().db_url)
    if require_schema:
        _require_schema(str(engine.url))
    return engine


@functools.cache
def _require_schema(url: str) -> None:
    """Refuse, with what to run instead, a database that is not at this LGSP's schema (no traceback)."""
    from sqlalchemy.exc import SQLAlchemyError

    from lgsp.config import settings
    from lgsp.startup_checks import StartupRefusal, check_schema_version
    from lgsp.storage import engine_for

    try:
        check_schema_version(engine_for(settings().db_url))
    except SQLAlchemyError as exc:
        raise click.ClickException(f"The database cannot be opened ({type(exc).__name__}); "
                                   f"check LGSP_DATABASE_URL.") from None
    except StartupRefusal as exc:
        raise click.ClickException(str(exc)) from None


class _Commands(click.Group):
    """The `lgsp` group: a database failure is a one-line error, never a traceback."""

    def invoke(self, ctx: click.Context):
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return super().invoke(ctx)
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0][:200]
            raise click.ClickException(f"The database could not be used ({reason}). If it has not been "
                                       f"migrated to this version, run `lgsp db upgrade`.") from None


def _admin():
    from lgsp.control.admin import Admin

    actor = f"cli:{os.environ.get('USER') or os.getuid()}"
    return Admin(_engine(), actor)


def _fail_on_admin_error(fn):
    """Turn AdminError into a clean one-line error instead of a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from lgsp.control.admin import AdminError

        try:
            return fn(*args, **kwargs)
        except AdminError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _print_rows(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        click.echo("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@click.group(cls=_Commands)
@click.version_option(package_name="lgsp")
def main() -> None:
    """LGSP — the provincial data-sharing platform.

    Configuration comes from the environment: LGSP_DATABASE_URL (default: SQLite in
    LGSP_HOME, ./.lgsp), LGSP_SECRET_KEY, LGSP_PUBLIC_URL.
    """


# -- serve ------------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="Worker processes.")
@click.option("--plane", type=click.Choice(["all", "data", "control", "worker"]), default="all", show_default=True,
              help="Serve the data plane (shared APIs), the control plane (tokens, admin), both (with delivery "
                   "workers), or only delivery workers (store-and-forward).")
@click.option("--migrate/--no-migrate", default=False, help="Run database migrations first.")
@click.option("--metrics-port", type=int, default=None, help="--plane worker: serve /metrics on this loopback port.")
def serve(host: str, port: int, workers: int, plane: str, migrate: bool, metrics_port: int | None) -> None:
    """Run the gateway."""
    import uvicorn

    from lgsp.config import settings

    if migrate:
        _upgrade()
    _check_schema()
    if plane == "worker":
        import asyncio

        from lgsp.delivery.worker import serve_worker_plane

        asyncio.run(serve_worker_plane(metrics_port))
        return
    if plane == "data":  # at scale, delivery runs in its own processes (--plane worker)
        os.environ.setdefault("LGSP_DELIVERY_WORKER", "0")
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="lgsp-metrics-")
    scheme = "https" if os.environ.get("LGSP_TLS_CERT_FILE") else "http"
    os.environ.setdefault("LGSP_PUBLIC_URL", f"{scheme}://{host}:{port}")
    settings.cache_clear()
    factory = {"all": "lgsp.app:combined", "data": "lgsp.app:data_plane", "control": "lgsp.app:control_plane"}[plane]
    from lgsp.doors.http_limits import SERVER_MAX_HEAD_BYTES  # request heads bounded at the server
    from lgsp.tls.server import PeerAwareHttpTools, uvicorn_options  # TLS, client certificates, proxies

    uvicorn.run(factory, factory=True, host=host, port=port, workers=workers, log_config=None,
                access_log=False, loop="auto", http=PeerAwareHttpTools, lifespan="auto" if plane != "control" else "off",
                ws="none",  # nothing is served over WebSocket: a worker need not import a WebSocket library
                timeout_graceful_shutdown=10, h11_max_incomplete_event_size=SERVER_MAX_HEAD_BYTES,
                **uvicorn_options(settings()))


def _check_schema() -> None:
    from lgsp.startup_checks import StartupRefusal, check_database

    try:
        check_database(_engine())  # schema version this release knows, keys this master secret opens
        from lgsp.documents import countersign

        countersign.check()  # the document counter-signature's certificate and key, when configured
    except StartupRefusal as exc:
        raise click.ClickException(str(exc)) from None


# -- db ---------------------------------------------------------------------------
@main.group()
def db() -> None:
    """Database schema."""


def _upgrade() -> None:
    from lgsp import keys
    from lgsp.audit import seals
    from lgsp.config import settings
    from lgsp.storage import upgrade

    upgrade(settings().db_url)
    made = seals.ensure_key(_engine())  # before anything is audited, so the key made is the one shown
    if made:
        _echo_seal_key(made)
    created = _admin().register_spec_services()
    keys.ensure_key(_engine())
    for name in created:
        click.echo(f"registered service {name}")


@db.command("upgrade")
def db_upgrade() -> None:
    """Bring the schema to the latest version (Alembic), register the specs' services, make a signing key."""
    _upgrade()
    click.echo("database is up to date")


# -- backup and restore ------------------------------------------------------------
@main.command("backup")
@click.argument("dump", type=click.Path(dir_okay=False, path_type=Path))
def backup_cmd(dump: Path) -> None:
    """Write a consistent copy of the database to DUMP (pg_dump custom format on PostgreSQL),
    with DUMP.json beside it. The master secret is not in it: back it up on its own."""
    from lgsp.backup import BackupError, backup

    try:
        meta = backup(_engine(), dump)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backup written: {dump} ({meta['bytes']:,} bytes, schema {', '.join(meta['schema'])})")
    click.echo(f"master secret fingerprint: {meta['secret_fingerprint']} — keep LGSP_SECRET_KEY in its own "
               "backup: without it the keys in this dump cannot be read.")


@main.command("restore")
@click.argument("dump", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def restore_cmd(dump: Path) -> None:
    """Load DUMP into the empty database LGSP_DATABASE_URL names, check that this master secret
    opens its keys, and verify the whole audit trail (exit 1 on any finding)."""
    from lgsp.audit.verify import verify_database
    from lgsp.backup import BackupError, restore
    from lgsp.startup_checks import StartupRefusal, check_master_secret

    engine = _engine(require_schema=False)  # restore fills an empty database
    try:
        restore(engine, dump)
        check_master_secret(engine)
    except (BackupError, StartupRefusal) as exc:
        raise click.ClickException(str(exc)) from None
    report = verify_database(engine)
    click.echo(f"restored {dump}; audit trail: {report.chains} chains, {report.records} records, "
               f"{report.seals} seals, {len(report.findings)} findings")
    sys.exit(0 if report.ok else 1)


# -- clients ----------------------------------------------------------------------
@main.group()
def clients() -> None:
    """Client systems (OAuth2 client credentials)."""


@clients.command("create")
@click.argument("client_id")
@click.option("--name", required=True, help="Name of the sector system.")
@click.option("--agency-code", help="Agency identifier (QCVN 102), e.g. 000.00.31.H30.")
@click.option("--agency-name")
@click.option("--secret-from-env", metavar="VAR", help="Take the secret from this environment variable.")
@click.option("--role", "roles", multiple=True, type=click.Choice(["auditor", "integrator", "admin"]),
              help="Extra role (repeatable): auditor reads the audit trail; integrator and admin manage the LGSP.")
@_fail_on_admin_error
def clients_create(client_id, name, agency_code, agency_name, secret_from_env, roles) -> None:
    """Create a client and print its secret (shown once; stored only as a hash)."""
    secret = os.environ.get(secret_from_env) if secret_from_env else None
    if secret_from_env and not secret:
        raise click.ClickException(f"Environment variable {secret_from_env} is empty.")
    secret = _admin().create_client(client_id, name, agency_code, agency_name, secret, roles)
    click.echo(f"client_id:     {client_id}")
    if not secret_from_env:
        click.echo(f"client_secret: {secret}")
        click.echo("Keep the secret now: it cannot be shown again.", err=True)


@clients.command("list")
def clients_list() -> None:
    rows = _admin().list_clients()
    for r in rows:
        r["roles"] = ",".join(r.get("roles") or []) or "-"
    _print_rows(rows, ["client_id", "name", "agency_code", "roles", "status", "created_at"])


@clients.command("disable")
@click.argument("client_id")
@_fail_on_admin_error
def clients_disable(client_id) -> None:
    """Disable a client: no new tokens, and live tokens refused within seconds."""
    _admin().set_client_status(client_id, "disabled")
    click.echo(f"client {client_id} disabled")


@clients.command("bind")
@click.argument("client_id")
@click.option("--method", type=click.Choice(["tls_client_auth", "self_signed_tls_client_auth"]),
              help="How the client proves itself at the token endpoint (RFC 8705).")
@click.option("--subject-dn", help="tls_client_auth: the certificate's subject, e.g. 'CN=motcua,O=So TTTT,C=VN'.")
@click.option("--certificate", "certificate", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="self_signed_tls_client_auth: the client's certificate (PEM file).")
@click.option("--allow-network", "networks", multiple=True, help="A network (CIDR) the client may call from; "
              "repeat for several.")
@_fail_on_admin_error
def clients_bind(client_id, method, subject_dn, certificate, networks) -> None:
    """Bind a client to a certificate and/or to the networks it may call from (replaces its binding)."""
    from lgsp.tls import registration

    spec = {"method": method, "allowed_networks": list(networks)}
    if subject_dn:
        spec["subject_dn"] = subject_dn
    if certificate:
        spec["certificate"] = certificate.read_text(encoding="utf-8", errors="replace")
    found = registration.put(_admin(), client_id, spec)
    click.echo(f"client {client_id} bound: method {found['method'] or '-'}, thumbprint {found['thumbprint'] or '-'}, "
               f"networks {', '.join(found['allowed_networks']) or 'any'}")


@clients.command("unbind")
@click.argument("client_id")
@_fail_on_admin_error
def clients_unbind(client_id) -> None:
    """Remove a client's certificate binding and allowed networks."""
    from lgsp.tls import registration

    registration.remove(_admin(), client_id)
    click.echo(f"client {client_id} unbound")


@clients.command("enable")
@click.argument("client_id")
@_fail_on_admin_error
def clients_enable(client_id) -> None:
    _admin().set_client_status(client_id, "active")
    click.echo(f"client {client_id} enabled")


# -- grants -----------------------------------------------------------------------
@main.group()
def grants() -> None:
    """Grants: client × service, with allowed fields and purposes."""


@grants.command("add")
@click.argument("client_id")
@click.argument("service")
@click.option("--fields", required=True, help="Comma-separated canonical fields (dotted paths allowed).")
@click.option("--purposes", required=True, help="Comma-separated purpose codes the client may state.")
@_fail_on_admin_error
def grants_add(client_id, service, fields, purposes) -> None:
    grant_id = _admin().add_grant(client_id, service, _csv(fields), _csv(purposes))
    click.echo(f"grant {grant_id}: {client_id} → {service}")


@grants.command("list")
@click.option("--client", "client_id")
def grants_list(client_id) -> None:
    rows = _admin().list_grants(client_id)
    for r in rows:
        r["allowed_fields"] = ",".join(r["allowed_fields"])
        r["allowed_purposes"] = ",".join(r["allowed_purposes"])
    _print_rows(rows, ["id", "client_id", "service", "status", "allowed_purposes", "allowed_fields"])


@grants.command("revoke")
@click.argument("grant_id", type=GRANT_ID)
@_fail_on_admin_error
def grants_revoke(grant_id) -> None:
    _admin().revoke_grant(grant_id)
    click.echo(f"grant {grant_id} revoked")


# -- connections, services, adapters, keys ----------------------------------------------
@main.group()
def connections() -> None:
    """Connections: an adapter and its settings."""


@connections.command("set")
@click.argument("name")
@click.option("--adapter", required=True)
@click.option("--settings", "settings_json", required=True, help="Settings as JSON, e.g. '{\"endpoint\": \"...\"}'.")
@click.option("--protection", "protection_json", default=None,
              help="Upstream protection as JSON, e.g. '{\"max_concurrent\": 20}' ('null': the defaults; "
                   "left out: unchanged). See docs/operations.md.")
@_fail_on_admin_error
def connections_set(name, adapter, settings_json, protection_json) -> None:
    try:
        values = json.loads(settings_json)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"--settings is not valid JSON: {exc}") from None
    extra = {}
    if protection_json is not None:
        try:
            extra["protection"] = json.loads(protection_json)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"--protection is not valid JSON: {exc}") from None
    _admin().set_connection(name, adapter, values, **extra)
    click.echo(f"connection {name} ({adapter}) saved")


@connections.command("list")
@click.option("--gateway", default=None, help="Base URL of the running gateway whose /metrics gives the circuit "
              "state (default: LGSP_PUBLIC_URL).")
def connections_list(gateway) -> None:
    """Connections, with each one's circuit state and calls under way as the running gateway reports them."""
    import httpx

    from lgsp.config import settings
    from lgsp.traffic import status

    rows = _admin().list_connections()
    url = gateway or settings().public_url
    try:
        states = status.fetch(url)
    except httpx.HTTPError as exc:
        click.echo(f"circuit state unknown: no /metrics from the gateway at {url} ({type(exc).__name__})", err=True)
        states = None
    for row in rows:
        seen = (states or {}).get(row["name"])
        row["circuit"] = "?" if states is None else seen["circuit"] if seen else "closed"
        row["in_use"] = "?" if states is None else seen["in_use"] if seen else 0
    _print_rows(rows, ["name", "adapter", "enabled", "circuit", "in_use", "updated_at"])


@main.group()
def services() -> None:
    """Services offered on the shared APIs."""


@services.command("list")
def services_list() -> None:
    _print_rows(_admin().list_services(),
                ["name", "version", "connection", "operation", "personal_data", "body_logging", "enabled"])


@services.command("body-logging")
@click.argument("service")
@click.argument("mode", type=click.Choice(["off", "metadata", "full"]))
@_fail_on_admin_error
def services_body_logging(service: str, mode: str) -> None:
    """What the audit trail keeps of payloads: off (default), metadata (parameter names),
    or full (request and answer, encrypted at rest; read them with `lgsp audit body`)."""
    _admin().set_body_logging(service, mode)
    click.echo(f"{service}: body logging {mode}")


@main.group()
def adapters() -> None:
    """Installed adapters (entry-point group lgsp.adapters)."""


@adapters.command("list")
def adapters_list() -> None:
    """Installed adapters, built-in and third-party, with their versions."""
    from lgsp import plugins

    rows = []
    for name, ep in sorted(plugins.installed().items()):
        dist = ep.dist.name if ep.dist else "?"
        try:
            cls = plugins.adapter_class(name)
        except Exception as exc:  # one broken plug-in must not hide the others
            rows.append({"name": name, "version": "?", "package": dist, "operations": f"(cannot load: {exc})"})
            continue
        rows.append({"name": name, "version": cls.version, "package": dist, "operations": ",".join(cls.operations)})
    _print_rows(rows, ["name", "version", "package", "operations"])


@adapters.command("new")
@click.argument("name")
@click.option("--directory", type=click.Path(path_type=Path),
              help="Directory to create (default: ./lgsp-adapter-NAME); it must not exist or be empty.")
def adapters_new(name: str, directory: Path | None) -> None:
    """Scaffold a third-party adapter package: pyproject with the entry point, a REST/JSON
    adapter over aiohttp, its mapping, a simulator of the backend, a README and tests."""
    from lgsp import scaffold

    try:
        target = scaffold.create(name, directory)
    except scaffold.ScaffoldError as exc:
        raise click.ClickException(str(exc)) from None
    values = scaffold.placeholders(name)
    package = values["{{package}}"]
    click.echo(f"created {target} (distribution {values['{{dist}}']}, module {package})")
    click.echo("next:")
    click.echo(f"  pip install {target}            # into the environment where lgsp is installed")
    click.echo(f"  cd {target} && python -m pytest")
    click.echo(f"  python -m {package}.simulator --port 8090")
    click.echo(f"  lgsp connections set {name} --adapter {name} --settings '{{\"endpoint\": \"http://127.0.0.1:8090\"}}'")
    click.echo(f"  lgsp adapters test {name} --connection {name}")


@adapters.command("test")
@click.argument("name")
@click.option("--connection", metavar="C", required=True, help="The registered connection to test against.")
def adapters_test(name: str, connection: str) -> None:
    """Contract test kit: call every operation of adapter NAME through connection C with the
    adapter's sample params, check the answers map cleanly, and, against an LGSP simulator,
    check that each fault mode becomes the right Upstream* error. Exit 1 on any failure."""
    from lgsp.control import contract

    _check_schema()
    try:
        adapter, values = contract.load_connection(_engine(), connection)
    except contract.ContractError as exc:
        raise click.ClickException(str(exc)) from None
    if adapter != name:
        raise click.ClickException(f"Connection '{connection}' uses the adapter '{adapter}', not '{name}'.")
    report = contract.run(name, values, connection)
    click.echo(report.table())
    click.echo(report.summary())
    # The kit calls the backend outside the pipeline: leave a trace of who did it.
    _admin().record_action("adapter.contract_test", connection, None, {
        "adapter": name, "ok": report.ok, "failed": [f"{c.subject}: {c.name}" for c in report.checks
                                                      if c.status == contract.FAIL]})
    sys.exit(0 if report.ok else 1)


@main.group()
def keys() -> None:
    """Token signing keys."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Make a new signing key; the old one keeps verifying until its tokens expire."""
    from lgsp import keys as k

    kid = k.rotate(_engine())
    _admin().record_action("keys.rotate", kid, None, {"kid": kid})
    click.echo(f"new active key {kid}")


@keys.command("list")
def keys_list() -> None:
    from lgsp import keys as k

    rows = [{"kid": r.kid, "status": r.status, "created_at": r.created_at, "retired_at": r.retired_at or ""}
            for r in k.load_rows(_engine())]
    _print_rows(rows, ["kid", "status", "created_at", "retired_at"])


# -- traffic policies ---------------------------------------------------------------
@main.group()
def policies() -> None:
    """Rates and quotas: per client, per client × service, and a connection's national daily quota."""


def _policy_target(client_id: str | None, service: str | None, connection: str | None) -> str:
    from lgsp.traffic.policies import PolicyError, target_of

    try:
        return target_of(client_id, service, connection)
    except PolicyError as exc:
        raise click.ClickException(f"{exc} Use --client [--service], or --connection.") from None


def _shares(values: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for value in values:
        client_id, _, share = value.partition("=")
        try:
            out[client_id.strip()] = int(share)
        except ValueError:
            raise click.ClickException(f"--share takes CLIENT=CALLS_PER_DAY, not {value!r}.") from None
    return out


@policies.command("set")
@click.option("--client", "client_id", help="The client the policy limits.")
@click.option("--service", help="With --client: only this service.")
@click.option("--connection", help="A national system's daily quota, shared by all clients.")
@click.option("--rate", "rate_per_second", type=float, help="Calls per second (sustained).")
@click.option("--burst", type=int, help="Calls at once (default: one second's worth).")
@click.option("--per-day", type=int, help="Calls per day (days start at local midnight).")
@click.option("--per-month", type=int, help="Calls per calendar month.")
@click.option("--share", "shares", multiple=True, metavar="CLIENT=N",
              help="With --connection: the most of the daily quota CLIENT may use (repeatable).")
@click.option("--on-store-failure", type=click.Choice(["open", "closed"]), default="open", show_default=True,
              help="When the counters cannot be reached: serve uncounted (open) or refuse (closed).")
@_fail_on_admin_error
def policies_set(client_id, service, connection, rate_per_second, burst, per_day, per_month, shares,
                 on_store_failure) -> None:
    """Create or replace a policy (what is left out is no limit)."""
    target = _policy_target(client_id, service, connection)
    values = {"rate_per_second": rate_per_second, "burst": burst, "per_day": per_day, "per_month": per_month,
              "shares": _shares(shares), "on_store_failure": on_store_failure}
    _admin().set_policy(target, {k: v for k, v in values.items() if v not in (None, {})})
    click.echo(f"policy {target} saved")


@policies.command("list")
def policies_list() -> None:
    rows = _admin().list_policies()
    for r in rows:
        r["shares"] = ",".join(f"{k}={v}" for k, v in (r.get("shares") or {}).items())
        for key in ("rate_per_second", "burst", "per_day", "per_month"):
            r[key] = "-" if r.get(key) is None else r[key]
    _print_rows(rows, ["target", "rate_per_second", "burst", "per_day", "per_month", "shares", "on_store_failure"])


@policies.command("delete")
@click.option("--client", "client_id")
@click.option("--service")
@click.option("--connection")
@_fail_on_admin_error
def policies_delete(client_id, service, connection) -> None:
    """Remove a policy (its calls are no longer limited by it)."""
    target = _policy_target(client_id, service, connection)
    _admin().delete_policy(target)
    click.echo(f"policy {target} removed")


# -- apply ------------------------------------------------------------------------
@main.command("apply")
@click.option("-f", "--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The province's configuration (connections, services, clients, grants).")
@click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")
@_fail_on_admin_error
def apply_file(path: Path, dry_run: bool) -> None:
    """Apply a configuration file: create what is missing, change what differs (idempotent)."""
    from lgsp.control import apply

    admin = _admin()
    changes = apply.plan(admin, apply.load(path))
    for change in changes:
        click.echo(change.describe())
    todo = [c for c in changes if c.action != "unchanged"]
    summary = f"{sum(c.action == 'create' for c in todo)} to create, {sum(c.action == 'update' for c in todo)} to change, " \
              f"{len(changes) - len(todo)} unchanged"
    if not todo:
        click.echo("no changes")
        return
    if dry_run:
        click.echo(f"dry run: {summary}")
        return
    for note in apply.apply(admin, changes):
        click.echo(note)
    click.echo(f"applied: {summary}")


# -- audit ------------------------------------------------------------------------
@main.group()
def audit() -> None:
    """The audit trail."""


@audit.command("verify")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Verify an export file offline instead of the database.")
@click.option("--trust", "trust_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Trust file of seal keys (`lgsp audit trust export`). Default: LGSP_AUDIT_TRUST or "
                   "LGSP_HOME/audit-trust.jsonl, plus the keys derived from the master secret. "
                   "The keys inside an export file are never trusted.")
@click.option("--witness", "witness_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Witness directory of sealed heads. Default for the database: LGSP_AUDIT_WITNESS or "
                   "LGSP_HOME/audit-witness; an export file is compared with a witness only when given.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--incremental", is_flag=True,
              help="Verify only what follows the last sealed verification checkpoint (see docs/audit.md).")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: one per CPU for a large trail).")
@click.option("--checkpoint/--no-checkpoint", default=True, show_default=True,
              help="After a verify with no findings, record a sealed checkpoint for --incremental.")
def audit_verify(path: Path | None, trust_file: Path | None, witness_dir: Path | None, as_json: bool,
                 incremental: bool, jobs: int | None, checkpoint: bool) -> None:
    """Check every hash chain and seal, and the database against the witness; exit 1 on any finding
    (edited, deleted, inserted, reordered or renumbered records, truncation, forged or untrusted seals,
    missing chains, start seals or witnessed heads)."""
    from lgsp.audit import checkpoint as audit_checkpoint
    from lgsp.audit import trust as audit_trust
    from lgsp.audit.verify import verify_database, verify_file

    def progress(n) -> None:
        chains = f", {n.chains_done}/{n.chains} chains" if hasattr(n, "chains") else ""
        rate = f", {n.rate:,.0f} records/s" if hasattr(n, "rate") else ""
        click.echo(f"… {n:,} records read{chains}{rate}", err=True)

    if trust_file is None and not audit_trust.trust_path().exists() and not audit_trust.master_secret_available():
        click.echo("Error: no trusted seal keys here: pass --trust FILE (made with `lgsp audit trust export` "
                   "where the gateway runs), or set LGSP_AUDIT_TRUST or LGSP_SECRET_KEY.", err=True)
        sys.exit(2)
    try:
        if path:
            report = verify_file(path, trust_file, witness_dir)
        else:
            engine = _engine()
            report = verify_database(engine, progress, witness_dir, trust_file, jobs=jobs, incremental=incremental)
            if report.checkpoint:
                click.echo(f"incremental: from the checkpoint of {report.checkpoint['at']} "
                           f"({report.checkpoint['chains']} chains)", err=True)
            elif incremental:
                click.echo("incremental: no usable checkpoint, verified in full", err=True)
            if checkpoint and report.ok:
                where = audit_checkpoint.record(engine, report)
                if where:
                    click.echo(f"checkpoint recorded: chain {where[0]} seq {where[1]}", err=True)
    except audit_trust.TrustFileError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"ok": report.ok, "chains": report.chains, "records": report.records,
                               "seals": report.seals, "unsealed": report.unsealed, "witness": report.witness,
                               "mode": report.mode, "checkpoint": report.checkpoint,
                               "findings": [f.__dict__ for f in report.findings]}, indent=2))
    else:
        for f in report.findings:
            ids = ", ".join(map(str, f.record_ids)) or "-"
            click.echo(f"{f.kind:14} chain {f.chain}  records {ids}: {f.detail}")
        for chain, n in report.unsealed.items():
            click.echo(f"{'(info)':14} chain {chain}: {n} record(s) after its last seal")
        if report.witness:
            w = report.witness
            click.echo(f"{'(info)':14} witness {w['directory']}: {w['seals']} seal(s) of database {w['database']}")
        click.echo(f"{report.chains} chains, {report.records} records, {report.seals} seals, "
                   f"{len(report.findings)} findings")
    sys.exit(0 if report.ok else 1)


def _when(value: str | None):
    import datetime as dt

    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date or date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


@audit.command("body")
@click.argument("record_id", type=DATABASE_ID)
def audit_body(record_id: int) -> None:
    """Decrypt the logged payload of one record (services with body logging `full`)."""
    from sqlalchemy import select

    from lgsp.crypto import fernet
    from lgsp.storage.schema import audit_bodies, audit_records

    engine = _engine()
    with engine.connect() as conn:
        rec = conn.execute(select(audit_records.c.chain, audit_records.c.seq)
                           .where(audit_records.c.id == record_id)).first()
        if rec is None:
            raise click.ClickException(f"No audit record {record_id}.")
        cipher = conn.execute(select(audit_bodies.c.ciphertext).where(
            audit_bodies.c.chain == rec.chain, audit_bodies.c.seq == rec.seq)).scalar()
    if cipher is None:
        raise click.ClickException(f"Record {record_id} has no logged payload (its service did not log bodies).")
    _admin().record_action("audit.read_body", str(record_id), None, {"record": record_id})
    click.echo(fernet().decrypt(cipher.encode()).decode())


@audit.command("export")
@click.option("--from", "start", help="Start (inclusive), ISO 8601; UTC when no offset is given.")
@click.option("--to", "end", help="End (exclusive), ISO 8601.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def audit_export(start: str | None, end: str | None, output: Path) -> None:
    """Export records of a time range as JSON Lines, with the seals and keys that verify them."""
    from lgsp.audit.export import export_jsonl

    with open(output, "wb") as out:
        counts = export_jsonl(_engine(), _when(start), _when(end), out, progress=_records_progress("written"))
    click.echo(f"exported {counts['records']} records of {counts['chains']} chains and {counts['seals']} seals "
               f"to {output}")


@audit.command("retain")
@click.option("--older-than", "days", type=click.IntRange(min=1), required=True, help="Age in days.")
@click.option("--archive-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
def audit_retain(days: int, archive_dir: Path) -> None:
    """Archive records older than N days to a sealed export file, then remove them."""
    import datetime as dt

    from lgsp.audit.export import retain

    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    result = retain(_engine(), cutoff, archive_dir, progress=_records_progress("archived"))
    if not result["records"]:
        click.echo("nothing older than the cut-off")
        return
    _admin().record_action("audit.retain", str(archive_dir), None, result)
    click.echo(f"archived and removed {result['records']} records of {result['chains']} chains: {result['archive']}")
    if result.get("partitions_dropped"):
        click.echo(f"dropped whole month partitions: {', '.join(result['partitions_dropped'])}")


def _records_progress(verb: str):
    """A progress line on stderr every 100,000 records (export and retention at province scale)."""
    def progress(n: int) -> None:
        click.echo(f"… {n:,} records {verb}", err=True)
    return progress


@audit.command("rotate-key")
def audit_rotate_key() -> None:
    """New seal-signing key; retired keys stay so old seals keep verifying."""
    from lgsp.audit import seals

    kid = seals.create_key(_engine())
    _admin().record_action("audit.rotate_key", kid, None, {"kid": kid})
    _echo_seal_key(kid)


def _echo_seal_key(kid: str) -> None:
    from lgsp.audit import seals
    from lgsp.audit import trust as audit_trust

    public = seals.derived_public(kid)
    click.echo(f"new seal key {kid}  {seals.fingerprint(public)}  (added to the trust file {audit_trust.trust_path()})")


@audit.group("trust")
def audit_trust_group() -> None:
    """The seal keys `lgsp audit verify` trusts: kept outside the database."""


@audit_trust_group.command("list")
def audit_trust_list() -> None:
    """Every seal key, trusted or not, with its fingerprint; exit 1 if the database holds an untrusted key."""
    from lgsp.audit import seals
    from lgsp.audit import trust as audit_trust

    trusted = audit_trust.trusted_keys(_engine())
    in_db = seals.database_keys(_engine())
    rows = [{"kid": kid, "fingerprint": seals.fingerprint(public),
             "trusted": "yes" if kid in trusted and trusted[kid] == public else "NO",
             "in_database": "yes" if kid in in_db else "no"}
            for kid, public in sorted({**trusted, **in_db}.items())]
    _print_rows(rows, ["kid", "fingerprint", "trusted", "in_database"])
    sys.exit(0 if all(r["trusted"] == "yes" for r in rows) else 1)


@audit_trust_group.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def audit_trust_export(output: Path) -> None:
    """Write the trusted seal keys (never a key the database alone vouches for) as a trust file,
    for `lgsp audit verify --file EXPORT --trust FILE` where the master secret is not at hand."""
    from lgsp.audit import seals
    from lgsp.audit import trust as audit_trust

    trusted = audit_trust.trusted_keys(_engine())
    with open(output, "wb") as out:
        out.write(b"# LGSP audit seal keys; compare the fingerprints with the operator's before use.\n")
        out.writelines(audit_trust.trust_line(kid, public) for kid, public in sorted(trusted.items()))
    for kid, public in sorted(trusted.items()):
        click.echo(f"{kid}  {seals.fingerprint(public)}")
    click.echo(f"wrote {len(trusted)} trusted seal key(s) to {output}")


@audit.group("witness")
def audit_witness_group() -> None:
    """The witness: sealed chain heads kept outside the database (LGSP_AUDIT_WITNESS)."""


@audit_witness_group.command("compact")
@click.option("--before", required=True, help="Fold the day files before this date (YYYY-MM-DD, at least yesterday).")
@click.option("--dir", "directory", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Witness directory (default LGSP_AUDIT_WITNESS or LGSP_HOME/audit-witness).")
def audit_witness_compact(before: str, directory: Path | None) -> None:
    """Keep, per chain, only the start seal and the highest witnessed head of the old day files
    (enough to catch a deleted chain, a deleted tail or a rewrite); back the files up first."""
    import datetime as dt

    from lgsp.audit import witness

    try:
        day = dt.date.fromisoformat(before)
        result = witness.compact(directory or witness.witness_dir(), day)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--before") from None
    click.echo(f"folded {result['files']} file(s), {result['lines']} line(s) into {result['kept']}")


# -- deliveries (store-and-forward) ----------------------------------------------------
@main.group()
def deliveries() -> None:
    """Store-and-forward messages: list, show, replay, cancel (each action audited)."""


def _operator(fn, *args, **kwargs):
    from lgsp.delivery.operators import OperatorError

    try:
        return fn(_engine(), f"cli:{os.environ.get('USER') or os.getuid()}", *args, **kwargs)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None


@deliveries.command("list")
@click.option("--status", help="accepted, delivering, failed, delivered, dead or cancelled.")
@click.option("--destination", help="The connection delivered through, e.g. portal.")
@click.option("--key", help="The ordering key (a dossier number).")
@click.option("--limit", default=50, show_default=True, type=int)
def deliveries_list(status, destination, key, limit) -> None:
    from lgsp.delivery.operators import list_messages

    rows = _operator(list_messages, status=status, destination=destination, key=key, limit=limit)
    for r in rows:
        r["error_code"] = (r.get("error") or {}).get("code") or ""
    _print_rows(rows, ["message_id", "status", "key", "destination", "attempts", "accepted_at", "error_code"])


@deliveries.command("show")
@click.argument("message_id")
@click.option("--payload", is_flag=True, help="Also decrypt and show what the message carries (recorded as such).")
def deliveries_show(message_id, payload) -> None:
    from lgsp.delivery.operators import show

    click.echo(json.dumps(_operator(show, message_id, payload=payload), indent=2, ensure_ascii=False, default=str))


@deliveries.command("replay")
@click.argument("message_id")
@click.option("--reason", help="Why, for the audit trail.")
def deliveries_replay(message_id, reason) -> None:
    """Put a dead or cancelled message back in the queue."""
    from lgsp.delivery.operators import replay

    row = _operator(replay, message_id, reason)
    click.echo(f"message {message_id} queued again (now {row['status']})")


@deliveries.command("cancel")
@click.argument("message_id")
@click.option("--reason", help="Why, for the audit trail and the sender's status.")
def deliveries_cancel(message_id, reason) -> None:
    """Take a waiting message (accepted or failed) out of the queue."""
    from lgsp.delivery.operators import cancel

    row = _operator(cancel, message_id, reason)
    click.echo(f"message {message_id} is {row['status']}")


@deliveries.command("callback-key")
@click.argument("client_id")
def deliveries_callback_key(client_id: str) -> None:
    """Print the key (hex) the client's callbacks are signed with, for the client to check them."""
    from lgsp.delivery.operators import OperatorError, callback_key

    try:
        click.echo(callback_key(_engine(), f"cli:{os.environ.get('USER') or os.getuid()}", client_id))
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None


# -- demo -------------------------------------------------------------------------
@main.command()
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--simulator-port", default=8081, show_default=True, type=int, help="Population database simulator.")
@click.option("--business-port", default=8082, show_default=True, type=int, help="Business registry simulator.")
@click.option("--portal-port", default=8083, show_default=True, type=int,
              help="National public-service portal simulator.")
@click.option("--check", is_flag=True, help="Run the printed requests, show the answers, and exit.")
def demo(port: int, simulator_port: int, business_port: int, portal_port: int, check: bool) -> None:
    """Embedded demo: SQLite, the national-system simulators, a client with grants."""
    from lgsp.demo import run

    sys.exit(run(port, simulator_port, check, business_port, portal_port=portal_port))


# -- agencies of the document exchange axis (lgsp.documents) ------------------------
from lgsp.documents.commands import agencies as _agencies  # noqa: E402 - the group needs `main` defined

main.add_command(_agencies)


if __name__ == "__main__":
    main()
