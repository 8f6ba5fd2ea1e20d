"""Simulator of the national business registration database (REST + OAuth2), for development and tests.

``create_app()`` gives the ASGI app; ``python -m lgsp_adapters.business.simulator``
serves it. See README.md beside this file.
"""
from __future__ import annotations

from .app import API_BASE, DEFAULT_CLIENT, Faults, create_app
from .data import FIXED_CODES, generate

__all__ = ["API_BASE", "DEFAULT_CLIENT", "FIXED_CODES", "Faults", "create_app", "generate"]
