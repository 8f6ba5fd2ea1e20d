"""Simulator of the national population database (SOAP 1.1), for development and tests.

``create_app()`` gives the ASGI app; ``python -m lgsp_adapters.population.simulator``
serves it. ``wsdl_path()`` locates the contract both the simulator and the adapter use.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["create_app", "wsdl_path", "xsd_path", "Faults", "FIXED_IDS", "generate"]


def wsdl_path() -> Path:
    """wsdl/population/population.wsdl, from the installed lgsp_wsdl or the source tree."""
    try:
        path = Path(str(resources.files("lgsp_wsdl") / "population" / "population.wsdl"))
        if path.is_file():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    # Source checkout: adapters/population/simulator -> ../../../wsdl
    return Path(__file__).resolve().parents[3] / "wsdl" / "population" / "population.wsdl"


def xsd_path() -> Path:
    """The citizen-data schema imported by the WSDL."""
    return wsdl_path().with_name("population.xsd")


from .app import Faults, create_app  # noqa: E402  (after wsdl_path, which app uses)
from .data import FIXED_IDS, generate  # noqa: E402
