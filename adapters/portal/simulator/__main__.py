"""Run the portal simulator: ``python -m lgsp_adapters.portal.simulator``."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from lgsp.sdk import Faults, serve_simulator

from .app import API_PATH, DEFAULT_ACCOUNT, PORTAL_MODES, create_app


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lgsp_adapters.portal.simulator",
                                description="Simulator of the national public-service portal's dossier sync.")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    p.add_argument("--port", type=int, default=8083)
    for name in ("dstcode", "madonvi", "username", "password"):
        p.add_argument(f"--{name}", default=DEFAULT_ACCOUNT[name], help=f"the province's {name} the portal accepts")
    p.add_argument("--session-ttl", type=float, default=1800.0, metavar="SECONDS", help="lifetime of sessions")
    p.add_argument("--fault", choices=PORTAL_MODES, default="normal", help="fault mode at start")
    p.add_argument("--delay", type=float, default=2.0, help="seconds of delay in slow mode")
    p.add_argument("--fault-count", type=int, metavar="N", help="apply the fault mode to the next N requests only")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    if args.session_ttl <= 0:
        print("--session-ttl must be positive", file=sys.stderr)
        return 2
    faults = Faults(modes=PORTAL_MODES)
    faults.configure(args.fault, args.delay, args.fault_count)
    account = {name: getattr(args, name) for name in ("dstcode", "madonvi", "username", "password")}
    app = create_app(account=account, session_ttl=args.session_ttl, faults=faults)
    print(f"portal simulator: http://{args.host}:{args.port}{API_PATH} (session TTL {args.session_ttl:g} s, "
          f"faults {args.fault})", file=sys.stderr)
    serve_simulator(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
