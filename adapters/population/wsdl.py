"""zeep and the WSDL: the contract check and the request templates of the population adapter.

A worker does not import this module at start-up: the adapter runs it as a script in a short-lived
child process (JSON on stdin and stdout), which loads the WSDL with zeep (the contract check) and
renders the request of every shape the adapter sends with slots for values, so zeep (~12 MiB with
requests) never lives in a worker. A worker imports it only for a shape no template covers (a list).
The script imports zeep and nothing of the adapter's package (whose imports would double its CPU).
"""
from __future__ import annotations

import json
import sys
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from lxml import etree
from zeep import Client, Settings
from zeep.transports import Transport

SCHEMES = ("http", "https")


class WsdlTransport(Transport):
    """zeep's loader for the WSDL and every schema it imports: files only from the adapter's
    package (`directory`), URLs only where the egress policy allows, and no redirects followed."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = Path(directory)

    def load(self, url: str) -> bytes:
        if urlsplit(url).scheme.lower() not in SCHEMES:
            path = Path(url2pathname(urlsplit(url).path) if url.lower().startswith("file:") else url).resolve()
            if not path.is_relative_to(self.directory):
                raise ValueError(f"{url[:200]} is outside the adapter's package ({self.directory})")
            return path.read_bytes()
        from lgsp.sdk import egress  # only for a WSDL or schema on the network (the SDK costs ~0.7 s CPU)

        egress.check_url(url)
        response = self.session.get(url, timeout=self.load_timeout, allow_redirects=False)
        with closing(response):
            if response.is_redirect:
                raise egress.EgressRefused(f"{url[:200]} answered with a redirect; the LGSP does not follow redirects.")
            response.raise_for_status()
            return response.content


class Contract:
    """The WSDL loaded by zeep (strict, no DTDs or entities), bound to the adapter's endpoint."""

    def __init__(self, location: str, endpoint: str, directory: str, operations: dict[str, str]):
        self.client = Client(location, transport=WsdlTransport(directory),
                             settings=Settings(strict=True, forbid_dtd=True, forbid_entities=True,
                                               forbid_external=True))
        binding = next(iter(self.client.wsdl.bindings.values()))  # the WSDL declares one SOAP 1.1 binding
        self.service = self.client.create_service(str(binding.name), endpoint)
        self.operations = operations  # the adapter's operation -> the WSDL's
        self.actions = {op: binding.get(name).soapaction for op, name in operations.items()}

    def message(self, operation: str, fields: dict[str, Any]) -> bytes:
        envelope = self.client.create_message(self.service, self.operations[operation], **fields)
        return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def prepare(asked: dict[str, Any]) -> dict[str, Any]:
    """The SOAPActions, and the envelope of each (operation, shaped request) asked, in order."""
    contract = Contract(asked["wsdl"], asked["endpoint"], asked["directory"], asked["operations"])
    return {"actions": contract.actions,
            "envelopes": [contract.message(op, shaped).decode("utf-8") for op, shaped in asked["shapes"]]}


if __name__ == "__main__":
    json.dump(prepare(json.load(sys.stdin)), sys.stdout)
