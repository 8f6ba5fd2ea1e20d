"""Roles a client may hold beyond calling shared APIs, and the OAuth2 scope each grants."""

ROLE_SCOPES = {"auditor": "audit.read", "integrator": "integrator", "admin": "admin"}
