"""The client certificate of a request, from the TLS connection or from a trusted proxy.

`ClientCertificate` (ASGI middleware, outermost in every plane) settles it once per request
and leaves it in the scope's extensions:

    scope["extensions"]["lgsp.client_cert"]   DER bytes, or None
    scope["extensions"]["lgsp.client_cert_thumbprint"]   its x5t#S256, or None

The certificate of the TLS connection is put there by lgsp.tls.server's protocol. Behind a
TLS-terminating proxy, the proxy passes the certificate in a header (URL-encoded PEM, as nginx's
`$ssl_client_escaped_cert`); that header is believed only when the connection comes from one of
the configured proxy addresses, and is removed from every request, so nothing below reads a
header that was not checked.
"""
from __future__ import annotations

import logging
import urllib.parse

from lgsp.config import Settings
from lgsp.tls import certs, networks

log = logging.getLogger(__name__)

CERT = "lgsp.client_cert"
THUMBPRINT = "lgsp.client_cert_thumbprint"
TLS_CERT = "lgsp.tls_client_cert"   # set by the server protocol: the certificate of the connection
PEER = "lgsp.peer"                   # set by the server protocol: the address the connection comes from


class ClientCertificate:
    """ASGI middleware: the request's client certificate, settled once (see the module's doc)."""

    def __init__(self, app, cfg: Settings):
        self.app = app
        self.header = cfg.client_cert_header.strip().lower().encode("latin-1")
        self.proxies = networks.parse(cfg.trusted_proxies)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        ext = scope.setdefault("extensions", {})
        if CERT in ext:  # settled by an outer instance (both planes in one process)
            return await self.app(scope, receive, send)
        cert = ext.get(TLS_CERT)
        forwarded = [v for k, v in scope["headers"] if k == self.header]
        if forwarded:
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != self.header]
            if self._from_proxy(scope) and len(forwarded) == 1 and forwarded[0]:
                cert = from_header(forwarded[0])
        ext[CERT] = cert
        ext[THUMBPRINT] = certs.thumbprint(cert) if cert else None
        return await self.app(scope, receive, send)

    def _from_proxy(self, scope) -> bool:
        peer = scope["extensions"].get(PEER) or (scope.get("client") or (None,))[0]
        return bool(self.proxies) and networks.contains(self.proxies, peer)


def from_header(value: bytes) -> bytes | None:
    """DER of the URL-encoded PEM a proxy sent; None (and a warning) if it is not one certificate."""
    try:
        text = urllib.parse.unquote(value.decode("latin-1"))
        return certs.der(certs.load_pem(text))
    except (certs.CertificateError, UnicodeError):
        log.warning("the proxy's client certificate header is not one PEM certificate; taken as none")
        return None


def certificates_reach(cfg: Settings) -> bool:
    """Whether client certificates can reach this gateway: its own TLS asks for them, or a proxy passes them."""
    return bool(cfg.trusted_proxies or (cfg.tls_cert_file and cfg.tls_client_ca_file))


def thumbprint_of(scope) -> str | None:
    return (scope.get("extensions") or {}).get(THUMBPRINT)


def certificate_of_environ(environ) -> bytes | None:
    """The client certificate of a WSGI request served through the ASGI stack (the control plane)."""
    scope = environ.get("asgi.scope") or {}
    return (scope.get("extensions") or {}).get(CERT)
