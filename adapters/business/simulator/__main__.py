"""Run the business-registration simulator: ``python -m lgsp_adapters.business.simulator``."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from lgsp.sdk import FAULT_MODES, Faults, serve_simulator

from .app import API_BASE, DEFAULT_CLIENT, create_app
from .data import STATUSES, Enterprise, generate


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m lgsp_adapters.business.simulator",
        description="REST simulator of the national business registration database (synthetic data).")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    p.add_argument("--port", type=int, default=8082)
    p.add_argument("--enterprises", type=int, default=300, help="how many enterprises and branches")
    p.add_argument("--seed", type=int, default=1, help="random seed of the dataset")
    p.add_argument("--admin-units", metavar="PATH",
                   help="administrative units, JSON or YAML (default: lgsp/codelists/data/admin-units.json)")
    p.add_argument("--client-id", default=DEFAULT_CLIENT[0], help="OAuth2 client id accepted by /token")
    p.add_argument("--client-secret", default=DEFAULT_CLIENT[1], help="its secret")
    p.add_argument("--token-ttl", type=float, default=3600.0, metavar="SECONDS",
                   help="lifetime of issued access tokens")
    p.add_argument("--list", type=int, metavar="N", help="print the first N enterprises and exit")
    p.add_argument("--fault", choices=FAULT_MODES, default="normal", help="fault mode at start")
    p.add_argument("--delay", type=float, default=2.0, help="seconds of delay in slow mode")
    p.add_argument("--fault-count", type=int, metavar="N",
                   help="apply the fault mode to the next N requests only")
    return p.parse_args(argv)


def _row(e: Enterprise) -> str:
    codes = "pre-2025" if e.legacy_codes else "current"
    return "\t".join((e.code, e.name, e.legal_form, STATUSES[e.status], e.founding_date.strftime("%d/%m/%Y"),
                      e.head_office.city, codes))


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    if args.list is not None:
        dataset = generate(max(args.enterprises, args.list), args.seed, args.admin_units)
        for e in dataset.enterprises[: args.list]:
            print(_row(e))
        return 0
    if args.token_ttl <= 0:
        print("--token-ttl must be positive", file=sys.stderr)
        return 2
    faults = Faults()
    faults.configure(args.fault, args.delay, args.fault_count)
    app = create_app(args.enterprises, args.seed, admin_units=args.admin_units, faults=faults,
                     clients={args.client_id: args.client_secret}, token_ttl=args.token_ttl)
    print(f"business registration simulator: http://{args.host}:{args.port}{API_BASE} "
          f"(token: /token, {args.enterprises} enterprises, seed {args.seed}, token TTL {args.token_ttl:g} s, "
          f"faults {args.fault})", file=sys.stderr)
    serve_simulator(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
