"""Simulator of the national document exchange axis (Trục liên thông văn bản quốc gia), for development and tests.

``create_app()`` gives the ASGI app; ``python -m lgsp_adapters.national_axis.simulator`` serves it.
See README.md beside this file.
"""
from __future__ import annotations

from .app import API_BASE, create_app
from .data import OTHER_SYSTEMS, PROVINCE_SYSTEM

__all__ = ["API_BASE", "OTHER_SYSTEMS", "PROVINCE_SYSTEM", "create_app"]
