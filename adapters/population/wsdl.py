"""zeep and the WSDL: the contract check and the request templates of the population adapter.

A worker does not import this module at start-up: the adapter runs it in a short-lived child
process (`python -m <package>.wsdl`, JSON on stdin and stdout), which loads the WSDL with zeep (the
contract check) and renders a template for every request shape the adapter sends, so zeep's ~15 MiB
never lives in a worker. A worker imports it only for a shape no template covers (a list request).
"""
from __future__ import annotations

import json
import sys
from contextlib import closing
from typing import Any
from urllib.parse import urlsplit

from lxml import etree
from zeep import Client, Settings
from zeep.transports import Transport

from lgsp.sdk import egress

from . import _SLOT, SOAP_OPERATIONS, _packaged


class WsdlTransport(Transport):
    """zeep's loader for the WSDL and every schema it imports: files only from the adapter's
    package, URLs only where the egress policy allows, and no redirects followed."""

    def load(self, url: str) -> bytes:
        if urlsplit(url).scheme.lower() not in egress.SCHEMES:
            return _packaged(url).read_bytes()
        egress.check_url(url)
        response = self.session.get(url, timeout=self.load_timeout, allow_redirects=False)
        with closing(response):
            if response.is_redirect:
                raise egress.EgressRefused(f"{url[:200]} answered with a redirect; the LGSP does not follow redirects.")
            response.raise_for_status()
            return response.content


class Contract:
    """The WSDL loaded by zeep (strict, no DTDs or entities), bound to the adapter's endpoint."""

    def __init__(self, location: str, endpoint: str):
        self.client = Client(location, transport=WsdlTransport(),
                             settings=Settings(strict=True, forbid_dtd=True, forbid_entities=True,
                                               forbid_external=True))
        binding = next(iter(self.client.wsdl.bindings.values()))  # the WSDL declares one SOAP 1.1 binding
        self.service = self.client.create_service(str(binding.name), endpoint)
        self.actions = {op: binding.get(name).soapaction for op, name in SOAP_OPERATIONS.items()}

    def message(self, operation: str, fields: dict[str, Any]) -> bytes:
        envelope = self.client.create_message(self.service, SOAP_OPERATIONS[operation], **fields)
        return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")

    def template(self, operation: str, shaped: dict[str, Any]) -> list[str]:
        """The envelope of a request whose values are slots, split once at the slots (so a value can
        never be mistaken for one)."""
        return _SLOT.split(self.message(operation, shaped).decode("utf-8"))


def prepare(location: str, endpoint: str, shapes: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The SOAPActions and one template per (operation, shaped request), in the order given."""
    contract = Contract(location, endpoint)
    return {"actions": contract.actions, "templates": [contract.template(op, shaped) for op, shaped in shapes]}


if __name__ == "__main__":
    asked = json.load(sys.stdin)
    json.dump(prepare(asked["wsdl"], asked["endpoint"], [(op, shaped) for op, shaped in asked["shapes"]]),
              sys.stdout)
