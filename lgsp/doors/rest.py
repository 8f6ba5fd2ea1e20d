"""The REST door: shared APIs served from their OpenAPI documents (connexion 3).

connexion routes and validates every request against the spec in openapi/;
every operation's `operationId` is the name of the service it offers, and all
operations land in one generic handler that builds an Exchange and hands it to
the pipeline. Requests the spec refuses still go through `pipeline.serve`
(as refusals), so they are answered as problem+json and audited.
"""
from __future__ import annotations

import logging
from typing import Any

from connexion import AsyncApp, ConnexionMiddleware
from connexion import request as current_request
from connexion.exceptions import BadRequestProblem, ProblemException, UnsupportedMediaTypeProblem
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.middleware.security import SecurityMiddleware
from connexion.options import SwaggerUIOptions
from connexion.resolver import Resolver
from starlette.exceptions import HTTPException
from starlette.responses import Response

from lgsp import bulk, personal_id, specs
from lgsp.delivery import accept as messages
from lgsp.doors.request_guard import allowed_methods
from lgsp.doors.request_guard import unreadable as unreadable_body
from lgsp.doors.rest_exchange import exchange_from, render
from lgsp.errors import ExchangeError
from lgsp.gateway import Gateway
from lgsp.pipeline.authorize import missing_purpose_sentence
from lgsp.pipeline.run import PIPELINES, Rendered, serve
from lgsp.pipeline.validate import check_enterprise_code

log = logging.getLogger(__name__)

# The operation of openapi/services.v1.yaml: the service is named in the path.
GENERIC = "services.call"

# Authentication is a pipeline stage shared with the SOAP door, so connexion's
# own security middleware is left out; routing and validation stay.
MIDDLEWARES = [m for m in ConnexionMiddleware.default_middlewares if m is not SecurityMiddleware]


def _response(rendered: Rendered) -> Response:
    status, headers, body = rendered
    return Response(content=body, status_code=status, headers=headers)


class RestDoor:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def handler_for(self, service: str):
        """The operation handler of one service: connexion passes validated params."""
        if service == GENERIC:
            return self.call_by_name
        if service in PIPELINES:  # bulk verification: its own stages, 202 on submit
            return self._bulk_handler(service)
        if messages.stages_for(service):  # store-and-forward: stored with its record, 202
            return self._message_handler(service)

        async def handle(body: dict | None = None, **params: Any) -> Response:
            if isinstance(body, dict):
                params.update(body)
            ex = exchange_from(current_request, service, params)
            return _response(await serve(ex, self.gateway, render))

        handle.__name__ = service.replace(".", "_")
        return handle

    def _bulk_handler(self, service: str):
        stages, rendering = PIPELINES[service], bulk.accepted(render)

        async def handle(body: dict | None = None, **params: Any) -> Response:
            if isinstance(body, dict):
                params.update(body)
            ex = exchange_from(current_request, service, params)
            return _response(await serve(ex, self.gateway, rendering, stages=stages))

        handle.__name__ = service.replace(".", "_")
        return handle

    def _message_handler(self, service: str):
        stages = messages.stages_for(service) or messages.ACCEPT

        async def handle(body: dict | None = None, **params: Any) -> Response:
            if isinstance(body, dict):
                params.update(body)
            ex = exchange_from(current_request, service, params)
            return _response(await messages.serve_message(ex, self.gateway, render, current_request.headers, stages))

        handle.__name__ = service.replace(".", "_")
        return handle

    async def call_by_name(self, service: str, body: dict) -> Response:
        """Any service by name (openapi/services.v1.yaml): params checked against the adapter's schema."""
        ex = exchange_from(current_request, service, dict(body))
        ex.check_params = True
        stages = PIPELINES.get(service)  # a list by name is still a job, polled and audited per person
        if stages is not None:
            return _response(await serve(ex, self.gateway, bulk.accepted(render), stages=stages))
        message_stages = messages.stages_for(service)  # a message by name is still stored and forwarded
        if message_stages is not None:
            rendered = await serve(ex, self.gateway, messages.accepted(render), stages=message_stages)
            if ex.error is None:
                messages.wake_workers(self.gateway)
            return _response(rendered)
        return _response(await serve(ex, self.gateway, render))

    # -- refusals raised by connexion before our handler ---------------------
    async def on_problem(self, req: ConnexionRequest, exc: Exception) -> ConnexionResponse:
        extensions = req.scope.get("extensions", {})
        ex = exchange_from(req, _service_of(req), dict(extensions.get("lgsp.path_params", {})))
        error = refusal_for(exc, ex.subject, req.url.path)
        if isinstance(exc, BadRequestProblem) and "enterprise_code" in ex.params:
            try:  # the spec's pattern refused it: say so in the code's own terms, as every door does
                check_enterprise_code(ex.params["enterprise_code"])
            except ExchangeError as malformed:
                error = malformed
        if error.code == "internal.error":  # a defect: keep its trace for the operator, never for the caller
            log.error("request %s failed before its handler", ex.request_id, exc_info=exc)
        status, headers, body = await serve(ex, self.gateway, render, refusal=error)
        return ConnexionResponse(status_code=status, body=body, headers=headers, content_type=headers["Content-Type"])


def _service_of(req: ConnexionRequest) -> str | None:
    routing = req.scope.get("extensions", {}).get("connexion_routing", {})
    return routing.get("operation_id")


def refusal_for(exc: Exception, subject: str | None = None, path: str | None = None) -> ExchangeError:
    """The stable error for an exception connexion raised before a handler ran."""
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    unreadable = unreadable_body(exc)
    if unreadable is not None:
        return unreadable
    if isinstance(exc, BadRequestProblem):
        detail = str(exc.detail or "The request does not match the API specification.")
        if "x-purpose" in detail.lower() and "missing" in detail.lower():
            return ExchangeError("purpose.missing", missing_purpose_sentence("rest"))
        if subject is not None or "personal_id" in detail:
            try:  # the spec's pattern refused it: say why in the personal ID's own terms
                personal_id.parse(subject if subject is not None else "")
            except personal_id.PersonalIdError as pid_error:
                return ExchangeError(pid_error.code, pid_error.detail)
        return ExchangeError("request.invalid", detail)
    if status == 413:
        return ExchangeError("request.too_large", "The request body is over the size limit of this API.")
    if isinstance(exc, UnsupportedMediaTypeProblem):
        return ExchangeError("request.unsupported_media_type", str(exc.detail))
    if status == 404:
        return ExchangeError("request.not_found", "There is no API at this address; see /api for the list.")
    if status == 405:
        allow = allowed_methods(path or "")
        detail = f"This address takes {allow} only." if allow else "This API does not accept that HTTP method."
        return ExchangeError("request.method_not_allowed", detail, headers={"Allow": allow} if allow else None)
    if isinstance(exc, (ProblemException, HTTPException)) and status and 400 <= status < 500:
        return ExchangeError("request.invalid", str(getattr(exc, "detail", "") or "The request is not valid."))
    return ExchangeError("internal.error", "The LGSP could not complete the exchange; it has been logged.")


def add_shared_apis(app: AsyncApp, gateway: Gateway) -> RestDoor:
    door = RestDoor(gateway)
    public_url = gateway.settings.public_url
    for api in specs.shared_apis():
        app.add_api(
            api.path,
            arguments={"public_url": public_url},
            resolver=Resolver(function_resolver=door.handler_for),
            strict_validation=True,
            swagger_ui_options=SwaggerUIOptions(swagger_ui=True),
        )
    for exc in (ProblemException, HTTPException, Exception):
        app.add_error_handler(exc, door.on_problem)
    return door
