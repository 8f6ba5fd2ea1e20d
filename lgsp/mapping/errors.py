"""What goes wrong with a mapping: the backend's answer (MappingError, per request) or the
mapping file itself (MappingSpecError, when it is loaded)."""
from __future__ import annotations


class MappingError(ValueError):
    """The backend's answer cannot be mapped (malformed data); names the national field."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class MappingSpecError(ValueError):
    """The mapping file itself is wrong (raised when it is loaded, never per request)."""
