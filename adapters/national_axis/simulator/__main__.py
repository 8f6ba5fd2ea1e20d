"""Run the national document exchange axis simulator: ``python -m lgsp_adapters.national_axis.simulator``."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from lgsp.sdk import FAULT_MODES, Faults, serve_simulator

from .app import API_BASE, create_app
from .data import OTHER_SYSTEMS, PROVINCE_SYSTEM


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lgsp_adapters.national_axis.simulator",
                                description="Simulator of the national document exchange axis (synthetic data).")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    p.add_argument("--port", type=int, default=8083)
    p.add_argument("--system-id", default=PROVINCE_SYSTEM[0], help="the province's exchange centre code")
    p.add_argument("--secret", default=PROVINCE_SYSTEM[1], help="its secret")
    p.add_argument("--fault", choices=FAULT_MODES, default="normal", help="fault mode at start")
    p.add_argument("--delay", type=float, default=2.0, help="seconds of delay in slow mode")
    p.add_argument("--fault-count", type=int, metavar="N", help="apply the fault mode to the next N requests only")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    faults = Faults()
    faults.configure(args.fault, args.delay, args.fault_count)
    app = create_app(systems={args.system_id: args.secret, **OTHER_SYSTEMS}, faults=faults)
    print(f"national document exchange axis simulator: http://{args.host}:{args.port}{API_BASE} "
          f"(system {args.system_id}, faults {args.fault})", file=sys.stderr)
    serve_simulator(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
