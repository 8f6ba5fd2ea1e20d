"""Declarative mapping of backend answers into the canonical model."""
