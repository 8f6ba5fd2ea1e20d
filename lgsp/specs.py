"""The spec files that drive the doors: OpenAPI documents in openapi/, WSDL in wsdl/."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path

import yaml


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


@cache
def shared_apis() -> tuple[SharedApi, ...]:
    """Every OpenAPI document in openapi/ that declares `x-lgsp-api` (a shared API)."""
    apis = []
    for path in sorted(openapi_dir().glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        meta = doc.get("x-lgsp-api")
        if not meta:
            continue
        base = "/" + doc["servers"][0]["url"].split("}}", 1)[-1].strip("/")
        services = {
            op["operationId"]: dict(op["x-lgsp-service"], name=op["operationId"])
            for item in doc["paths"].values()
            for op in item.values()
            if isinstance(op, dict) and "x-lgsp-service" in op
        }
        apis.append(SharedApi(meta["name"], meta.get("title", meta["name"]), path, base, services))
    return tuple(apis)


@cache
def control_apis() -> tuple[Path, ...]:
    """OpenAPI documents of control-plane APIs (they declare `x-lgsp-control-api`)."""
    return tuple(
        path for path in sorted(openapi_dir().glob("*.yaml"))
        if "x-lgsp-control-api" in yaml.safe_load(path.read_text(encoding="utf-8"))
    )
