"""Forward audit records as they are written to a SIEM, as RFC 5424 syslog messages.

LGSP_AUDIT_SYSLOG=udp://host:514 or tcp://host:6514 (TCP uses octet-counting
framing, RFC 6587). The message is the record as JSON: it already holds no
personal ID, only its keyed hash. Seals go the same way (msgid `seal`), so the
SIEM holds the signed chain heads too: a witness outside the database.
Forwarding is best effort: the database is the record of truth, and a SIEM
outage never blocks an exchange.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from typing import Any, Mapping
from urllib.parse import urlsplit

import orjson

log = logging.getLogger(__name__)

# facility 13 (log audit), severity 6 (informational)
PRI = 13 * 8 + 6


def format_5424(record: Mapping[str, Any], hostname: str, procid: str, msgid: str | None = None) -> bytes:
    at = record["at"]
    stamp = at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(at, dt.datetime) else at
    body = {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in record.items()}
    msgid = msgid or ("exchange" if record.get("kind") == "exchange" else "admin")
    return f"<{PRI}>1 {stamp} {hostname} lgsp {procid} {msgid} - ".encode() + orjson.dumps(body)


class SyslogForwarder:
    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tcp") or not parts.hostname:
            raise ValueError(f"LGSP_AUDIT_SYSLOG must look like udp://host:514 or tcp://host:6514, not {url!r}")
        self.address = (parts.hostname, parts.port or 514)
        self.tcp = parts.scheme == "tcp"
        self.hostname = socket.gethostname()[:255] or "-"
        self.procid = str(os.getpid())
        self._sock: socket.socket | None = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            if self.tcp:
                self._sock = socket.create_connection(self.address, timeout=2)
            else:
                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        return self._sock

    def send(self, records: list[Mapping[str, Any]], msgid: str | None = None) -> None:
        """Records (msgid exchange/admin), or seals (msgid `seal`: the signed chain heads)."""
        try:
            sock = self._socket()
            for record in records:
                message = format_5424(record, self.hostname, self.procid, msgid)
                if self.tcp:
                    sock.sendall(str(len(message)).encode() + b" " + message)
                else:
                    sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("syslog forwarding to %s:%s failed: %s", *self.address, type(exc).__name__)
            if self._sock is not None:
                self._sock.close()
            self._sock = None


def from_environment() -> SyslogForwarder | None:
    url = os.environ.get("LGSP_AUDIT_SYSLOG")
    return SyslogForwarder(url) if url else None
