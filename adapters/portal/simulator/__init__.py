"""Simulator of the national public-service portal's dossier sync, for development and tests.

``create_app()`` gives the ASGI app; ``python -m lgsp_adapters.portal.simulator`` serves it.
See README.md beside this file.
"""
from __future__ import annotations

from .app import API_PATH, DEFAULT_ACCOUNT, PORTAL_MODES, create_app
from .data import FIXED_DOSSIERS

__all__ = ["API_PATH", "DEFAULT_ACCOUNT", "FIXED_DOSSIERS", "PORTAL_MODES", "create_app"]
