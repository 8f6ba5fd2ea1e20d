"""TLS at `lgsp serve`: uvicorn's options, the protocol that hands each request its connection's
client certificate, and the server's trust in registered self-signed client certificates.

Clients are asked for a certificate (CERT_OPTIONAL): one without a certificate is still served
(and hears problem+json if its client needs one); a certificate that does not verify ends the
handshake. Certificates verify against the client CA bundle and, for clients registered with
`self_signed_tls_client_auth`, against their own registered certificate, which the server loads
into its trust store as clients are registered (polled, like the rest of the configuration).
Trust at the handshake only lets the connection be made: who the client is, is decided by the
token endpoint and the data plane from the certificate itself (lgsp.tls.binding).
"""
from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

from sqlalchemy import select

from lgsp.config import Settings, settings
from lgsp.doors.one_write import OneWriteHttpTools
from lgsp.tls import peer

log = logging.getLogger(__name__)


def uvicorn_options(cfg: Settings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run: TLS when a certificate is configured, and the proxies
    whose X-Forwarded-For is believed when proxies are configured."""
    options: dict[str, Any] = {}
    if cfg.trusted_proxies:
        options["forwarded_allow_ips"] = [p.strip() for p in cfg.trusted_proxies.split(",") if p.strip()]
    if not cfg.tls_cert_file:
        return options
    options.update(ssl_certfile=cfg.tls_cert_file, ssl_keyfile=cfg.tls_key_file or None)
    if cfg.tls_client_ca_file:
        options.update(ssl_ca_certs=cfg.tls_client_ca_file, ssl_cert_reqs=ssl.CERT_OPTIONAL,
                       ssl_context_factory=context_factory)
    return options


def context_factory(config, default_factory) -> ssl.SSLContext:
    """uvicorn's context (certificate, key, client CA, CERT_OPTIONAL), trusting registered
    self-signed client certificates too; runs in each worker process."""
    ctx = default_factory()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    SelfSignedTrust(ctx, settings()).start()
    return ctx


class SelfSignedTrust:
    """Loads the certificates of `self_signed_tls_client_auth` clients into a TLS context's trust
    store, now and whenever the configuration changes (a store only grows: a removed client's
    certificate still completes a handshake, and is then refused by the binding checks)."""

    def __init__(self, ctx: ssl.SSLContext, cfg: Settings):
        self.ctx = ctx
        self.cfg = cfg
        self.loaded: set[str] = set()
        self._stop = threading.Event()

    def load(self) -> int:
        from lgsp.storage import engine_for
        from lgsp.storage.schema import client_bindings

        with engine_for(self.cfg.db_url).connect() as conn:
            rows = conn.execute(select(client_bindings.c.thumbprint, client_bindings.c.certificate)
                                .where(client_bindings.c.method == "self_signed_tls_client_auth")).all()
        added = 0
        for thumb, pem in rows:
            if thumb and pem and thumb not in self.loaded:
                self.ctx.load_verify_locations(cadata=pem)
                self.loaded.add(thumb)
                added += 1
        return added

    def start(self) -> None:
        self._safe_load()
        threading.Thread(target=self._run, name="lgsp-tls-trust", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(max(self.cfg.config_poll_seconds, 0.2)):
            self._safe_load()

    def _safe_load(self) -> None:
        try:
            if self.load():
                log.info("self-signed client certificates loaded", extra={"fields": {"trusted": len(self.loaded)}})
        except Exception:  # the database may blink; keep the certificates loaded so far
            log.warning("self-signed client certificates could not be loaded", exc_info=True)


class PeerAwareHttpTools(OneWriteHttpTools):
    """The gateway's HTTP protocol (head bounded, answer in one write), telling each request its
    connection's peer address and client certificate (uvicorn does not put them in the ASGI scope)."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.app = _with_connection(self.app, self.client[0] if self.client else None, cert or None)


def _with_connection(app, address: str | None, cert: bytes | None):
    async def connection_app(scope, receive, send):
        ext = scope.setdefault("extensions", {})
        ext[peer.PEER] = address
        ext[peer.TLS_CERT] = cert
        return await app(scope, receive, send)

    return connection_app
