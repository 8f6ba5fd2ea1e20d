"""The spec files that drive the doors: OpenAPI documents in openapi/, WSDL in wsdl/."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def openapi_dir() -> Path:
    return Path(str(files("lgsp_openapi")))


def wsdl_dir() -> Path:
    return Path(str(files("lgsp_wsdl")))


@dataclass(frozen=True)
class SharedApi:
    name: str
    title: str
    path: Path
    base_path: str           # e.g. /api/population/v1
    services: dict[str, dict]  # operationId (= service name) → x-lgsp-service
    door: str = "rest"       # x-lgsp-api.door: "documents" = served by its own streaming door, not the REST door's


@cache
def document(path: Path) -> dict[str, Any]:
    """An OpenAPI document, parsed once per process with libyaml (pure-Python YAML took 1.8 s per
    worker for all of them). Shared by every reader: never change it in place."""
    with path.open("rb") as fh:
        doc = yaml.load(fh, Loader=_Loader)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not an OpenAPI document")
    return doc


def base_path(doc: dict[str, Any]) -> str:
    """The path an OpenAPI document is served under: its first server URL without `{{ public_url }}`."""
    return "/" + str(doc["servers"][0]["url"]).split("}}", 1)[-1].strip("/")


@cache
def shared_apis() -> tuple[SharedApi, ...]:
    """Every OpenAPI document in openapi/ that declares `x-lgsp-api` (a shared API)."""
    apis = []
    for path in sorted(openapi_dir().glob("*.yaml")):
        doc = document(path)
        meta = doc.get("x-lgsp-api")
        if not meta:
            continue
        base = base_path(doc)
        services = {
            op["operationId"]: dict(op["x-lgsp-service"], name=op["operationId"])
            for item in doc["paths"].values()
            for op in item.values()
            if isinstance(op, dict) and "x-lgsp-service" in op
        }
        apis.append(SharedApi(meta["name"], meta.get("title", meta["name"]), path, base, services,
                              meta.get("door", "rest")))
    return tuple(apis)


@cache
def control_apis() -> tuple[Path, ...]:
    """OpenAPI documents of control-plane APIs (they declare `x-lgsp-control-api`)."""
    return tuple(
        path for path in sorted(openapi_dir().glob("*.yaml"))
        if "x-lgsp-control-api" in document(path)
    )
