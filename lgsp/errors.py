"""One table of stable error codes, shared by both doors.

REST answers them as RFC 9457 problem+json, SOAP as Faults; the audit record
stores the code. Codes never change meaning once published; docs/errors.md lists them.
"""
from __future__ import annotations

from typing import Any, Literal, NamedTuple


class ErrorKind(NamedTuple):
    status: int
    title: str
    soap_fault: str  # "Client" (the caller's fault) or "Server"


# Every code of the table below, as a type: a stage that raises a code not in the table fails
# the type check, not a request (tests/test_units.py holds the two lists together). A new code
# goes into both.
ErrorCode = Literal[
    "request.invalid",
    "request.too_large",
    "request.malformed",
    "request.not_found",
    "request.method_not_allowed",
    "request.unsupported_media_type",
    "personal_id.malformed",
    "personal_id.impossible",
    "enterprise_code.malformed",
    "bulk.too_many_items",
    "bulk.duplicate_items",
    "auth.token_missing",
    "auth.token_invalid",
    "auth.token_expired",
    "auth.client_disabled",
    "auth.digest_unsupported",
    "access.no_grant",
    "access.not_owner",
    "purpose.missing",
    "purpose.not_allowed",
    "record.not_found",
    "record.invalid",
    "service.unknown",
    "service.unavailable",
    "upstream.timeout",
    "upstream.unavailable",
    "upstream.fault",
    "upstream.malformed",
    "upstream.error",
    "audit.unavailable",
    "internal.error",
    "admin.invalid",
    "admin.not_found",
    "admin.conflict",
    "auth.token_not_yet_valid",
    "auth.token_lifetime",
    "access.filter_not_granted",
    "cursor.invalid",
    "admin.egress_refused",
    "upstream.egress_refused",
    "request.context_invalid",
    "request.header_too_large",
    "record.invalid_characters",
    "auth.throttled",
    "rate.limited",
    "rate.store_unavailable",
    "upstream.busy",
    "token.binding",
    "access.source_not_allowed",
    "admin.certificate_invalid",
    "admin.network_invalid",
    "document.malformed",
    "document.schema_invalid",
    "document.signature_invalid",
    "document.certificate_untrusted",
    "document.certificate_expired",
    "document.manifest_mismatch",
    "document.sender_mismatch",
    "document.unknown_recipient",
    "document.too_large",
    "delivery.callback_refused",
    "delivery.cancelled",
    "delivery.not_replayable",
    "delivery.not_cancellable",
]


ERRORS: dict[ErrorCode, ErrorKind] = {
    "request.invalid": ErrorKind(400, "The request is not valid", "Client"),
    "request.too_large": ErrorKind(413, "The request body is too large", "Client"),
    "request.malformed": ErrorKind(400, "The request cannot be read", "Client"),
    "request.not_found": ErrorKind(404, "No such API", "Client"),
    "request.method_not_allowed": ErrorKind(405, "Method not allowed", "Client"),
    "request.unsupported_media_type": ErrorKind(415, "Unsupported media type", "Client"),
    "personal_id.malformed": ErrorKind(400, "Malformed personal ID", "Client"),
    "personal_id.impossible": ErrorKind(400, "Impossible personal ID", "Client"),
    "enterprise_code.malformed": ErrorKind(400, "Malformed enterprise code", "Client"),
    "bulk.too_many_items": ErrorKind(400, "Too many items in the list", "Client"),
    "bulk.duplicate_items": ErrorKind(400, "The same person is listed twice", "Client"),
    "auth.token_missing": ErrorKind(401, "Access token required", "Client"),
    "auth.token_invalid": ErrorKind(401, "Access token not valid", "Client"),
    "auth.token_expired": ErrorKind(401, "Access token expired", "Client"),
    "auth.client_disabled": ErrorKind(401, "Client disabled", "Client"),
    "auth.digest_unsupported": ErrorKind(401, "Password digest not supported", "Client"),
    "access.no_grant": ErrorKind(403, "No grant for this service", "Client"),
    "access.not_owner": ErrorKind(403, "Only the data owner may do this", "Client"),
    "purpose.missing": ErrorKind(400, "Purpose required", "Client"),
    "purpose.not_allowed": ErrorKind(403, "Purpose not allowed", "Client"),
    "record.not_found": ErrorKind(404, "Record not found", "Client"),
    "record.invalid": ErrorKind(422, "Record does not fit the dataset's schema", "Client"),
    "service.unknown": ErrorKind(404, "No such service", "Client"),
    "service.unavailable": ErrorKind(503, "Service not available", "Server"),
    "upstream.timeout": ErrorKind(504, "Upstream system timed out", "Server"),
    "upstream.unavailable": ErrorKind(502, "Upstream system unavailable", "Server"),
    "upstream.fault": ErrorKind(502, "Upstream system reported a fault", "Server"),
    "upstream.malformed": ErrorKind(502, "Upstream system answered with a malformed message", "Server"),
    "upstream.error": ErrorKind(502, "Upstream system error", "Server"),
    "audit.unavailable": ErrorKind(503, "Audit log unavailable; exchange refused", "Server"),
    "internal.error": ErrorKind(500, "Internal error", "Server"),
    "admin.invalid": ErrorKind(422, "The change is not valid", "Client"),
    "admin.not_found": ErrorKind(404, "No such object", "Client"),
    "admin.conflict": ErrorKind(409, "The object already exists", "Client"),
    # Authorisation hardening (issue 7, section 4).
    "auth.token_not_yet_valid": ErrorKind(401, "Access token not valid yet", "Client"),
    "auth.token_lifetime": ErrorKind(401, "Access token lifetime too long", "Client"),
    "access.filter_not_granted": ErrorKind(403, "Filter on a field the grant does not allow", "Client"),
    "cursor.invalid": ErrorKind(400, "Cursor not valid", "Client"),
    "admin.egress_refused": ErrorKind(400, "Destination refused by the egress policy", "Client"),
    "upstream.egress_refused": ErrorKind(502, "Upstream destination refused by the egress policy", "Server"),
    "request.context_invalid": ErrorKind(400, "Officer, purpose or request id not acceptable", "Client"),
    "request.header_too_large": ErrorKind(431, "Request header fields too large", "Client"),
    "record.invalid_characters": ErrorKind(400, "Record holds characters that cannot be exchanged", "Client"),
    "auth.throttled": ErrorKind(429, "Too many failed authentications", "Client"),
    # Rate limits and quotas (issue 9, lgsp.traffic).
    "rate.limited": ErrorKind(429, "Rate limit or quota reached", "Client"),
    "rate.store_unavailable": ErrorKind(503, "Rate-limit counters unavailable; exchange refused", "Server"),
    # Upstream protection (issue 9); an open circuit answers upstream.unavailable with 503 and Retry-After.
    "upstream.busy": ErrorKind(503, "Upstream system has too many calls under way", "Server"),
    # Certificate-bound clients and address allow-lists (issue 9).
    "token.binding": ErrorKind(401, "Access token not bound to this connection's certificate", "Client"),
    "access.source_not_allowed": ErrorKind(403, "Client not allowed from this network address", "Client"),
    "admin.certificate_invalid": ErrorKind(400, "The certificate or distinguished name is not valid", "Client"),
    "admin.network_invalid": ErrorKind(400, "The network address list is not valid", "Client"),
    # Document exchange axis (issue 11): edXML packages and their signatures.
    "document.malformed": ErrorKind(400, "The edXML package cannot be read", "Client"),
    "document.schema_invalid": ErrorKind(400, "The edXML package does not fit the edXML schema", "Client"),
    "document.signature_invalid": ErrorKind(400, "The document's digital signature is not valid", "Client"),
    "document.certificate_untrusted": ErrorKind(400, "The signer's certificate is not trusted", "Client"),
    "document.certificate_expired": ErrorKind(400, "The signer's certificate is not valid at this time", "Client"),
    "document.manifest_mismatch": ErrorKind(400, "Manifest and attachments do not match", "Client"),
    "document.sender_mismatch": ErrorKind(403, "The document's sender is not the caller's agency", "Client"),
    "document.unknown_recipient": ErrorKind(400, "A recipient agency is unknown", "Client"),
    "document.too_large": ErrorKind(413, "The edXML package is too large", "Client"),
    # Store-and-forward delivery (issue 10).
    "delivery.callback_refused": ErrorKind(400, "Callback URL refused by the egress policy", "Client"),
    "delivery.cancelled": ErrorKind(409, "Message cancelled by an operator", "Client"),
    "delivery.not_replayable": ErrorKind(409, "Only a dead or cancelled message can be replayed", "Client"),
    "delivery.not_cancellable": ErrorKind(409, "Only a message still waiting can be cancelled", "Client"),
}


class ExchangeError(Exception):
    """A refusal or failure with a stable code and a sentence for a person."""

    def __init__(self, code: ErrorCode, detail: str, *, headers: dict[str, str] | None = None,
                 status: int | None = None):
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(detail)
        self.code: ErrorCode = code
        self.detail = detail
        self.headers = headers or {}
        self._status = status  # the code's own status unless the case has a truer one (an open circuit: 503)

    @property
    def status(self) -> int:
        return self._status or ERRORS[self.code].status

    @property
    def outcome(self) -> str:
        # "refused": the caller's side (4xx); "failed": ours or upstream's (5xx).
        return "refused" if self.status < 500 else "failed"


def problem(code: ErrorCode, detail: str, request_id: str | None, instance: str | None = None,
            status: int | None = None) -> dict[str, Any]:
    """RFC 9457 problem details with our extension members `code` and `request_id`."""
    kind = ERRORS[code]
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": kind.title,
        "status": status or kind.status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
    }
    if instance:
        body["instance"] = instance
    return body
