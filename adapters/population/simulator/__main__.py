"""Run the population-database simulator: ``python -m lgsp_adapters.population.simulator``."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from lgsp.sdk import FAULT_MODES, Faults, serve_simulator

from .app import create_app
from .data import Citizen, generate


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m lgsp_adapters.population.simulator",
        description="SOAP 1.1 simulator of the national population database (synthetic data).")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--citizens", type=int, default=3000, help="how many synthetic citizens")
    p.add_argument("--seed", type=int, default=1, help="random seed of the dataset")
    p.add_argument("--admin-units", metavar="PATH",
                   help="administrative units, JSON or YAML (default: lgsp/codelists/data/admin-units.json)")
    p.add_argument("--list", type=int, metavar="N", help="print the first N citizens and exit")
    p.add_argument("--fault", choices=FAULT_MODES, default="normal", help="fault mode at start")
    p.add_argument("--delay", type=float, default=2.0, help="seconds of delay in slow mode")
    p.add_argument("--fault-count", type=int, metavar="N",
                   help="apply the fault mode to the next N requests only")
    return p.parse_args(argv)


def _row(c: Citizen) -> str:
    birth = c.birth_date or f"{c.birth_year}"
    codes = "pre-2025" if c.legacy_codes else "current"
    return "\t".join((c.personal_id, c.old_id or "-", c.full_name,
                      "nam" if c.gender == "1" else "nữ", birth, c.relation or "-",
                      c.household or "-", codes))


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    if args.list is not None:
        dataset = generate(max(args.citizens, args.list), args.seed, args.admin_units)
        for c in dataset.citizens[: args.list]:
            print(_row(c))
        return 0
    faults = Faults()
    faults.configure(args.fault, args.delay, args.fault_count)
    app = create_app(args.citizens, args.seed, admin_units=args.admin_units, faults=faults)
    print(f"population simulator: http://{args.host}:{args.port}/dancu "
          f"({args.citizens} citizens, seed {args.seed}, faults {args.fault})", file=sys.stderr)
    serve_simulator(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
