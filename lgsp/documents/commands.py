"""``lgsp agencies …``: the agency directory of the document exchange axis from the command line."""
from __future__ import annotations

import asyncio

import click

_COLUMNS = ["code", "name", "scope", "client_id", "parent_code", "email", "source", "updated_at"]


def _directory():
    import os

    from lgsp import cli
    from lgsp.documents.agencies import Directory

    return Directory(cli._engine(), f"cli:{os.environ.get('USER') or os.getuid()}")


def _guarded(fn):
    from lgsp.cli import _fail_on_admin_error

    return _fail_on_admin_error(fn)


@click.group()
def agencies() -> None:
    """Agencies that send and receive documents: the province's own and the national axis's."""


@agencies.command("list")
@click.option("--scope", type=click.Choice(["local", "national"]), help="Only local or only national agencies.")
def agencies_list(scope: str | None) -> None:
    from lgsp.cli import _print_rows

    _print_rows(_directory().list(scope), _COLUMNS)


@agencies.command("set")
@click.argument("code")
@click.option("--name", help="The agency's name (required when creating).")
@click.option("--scope", type=click.Choice(["local", "national"]), help="local (default) or national.")
@click.option("--client", "client_id", help="Client id of the agency's document-management system.")
@click.option("--parent", "parent_code", help="Code of the parent agency.")
@click.option("--email")
@click.option("--phone")
@click.option("--fax")
def agencies_set(code: str, **values: str | None) -> None:
    """Create or change an agency (QCVN 102 code, e.g. 000.00.31.H30)."""
    changes = {k: v for k, v in values.items() if v is not None}

    @_guarded
    def run() -> bool:
        return _directory().set(code, **changes)
    click.echo(f"agency {code} {'saved' if run() else 'unchanged'}")


@agencies.command("delete")
@click.argument("code")
def agencies_delete(code: str) -> None:
    _guarded(lambda: _directory().delete(code))()
    click.echo(f"agency {code} deleted")


@agencies.command("sync")
@click.option("--connection", default="national-axis", show_default=True,
              help="The connection to the national axis (adapter national-axis).")
def agencies_sync(connection: str) -> None:
    """Make the national agencies those the national axis lists (getAgenciesList); local ones are kept."""
    from lgsp.documents.agencies import fetch_national

    @_guarded
    def run() -> dict:
        directory = _directory()
        listed = asyncio.run(fetch_national(directory.engine, connection))
        return directory.sync_national(listed)
    result = run()
    click.echo(f"national agencies: {len(result['created'])} created, {len(result['updated'])} updated, "
               f"{len(result['removed'])} removed" + (f", {len(result['skipped'])} skipped (bad code)"
                                                      if result["skipped"] else ""))
