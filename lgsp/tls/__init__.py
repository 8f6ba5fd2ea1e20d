"""Certificate-bound clients (RFC 8705): TLS at the server, the client certificate of each
request (from the TLS connection or a trusted proxy's header), client bindings and their checks."""
