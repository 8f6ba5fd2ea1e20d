"""Adapters see LGSP only through lgsp.sdk, so the gateway's internals can move freely."""
from __future__ import annotations

import ast
import re

from helpers import ROOT

import lgsp.sdk

ADAPTER_FILES = sorted((ROOT / "adapters").rglob("*.py"))
SCAFFOLD_FILES = sorted((ROOT / "lgsp" / "scaffold_templates").rglob("*.py.tmpl"))


def lgsp_imports(source: str) -> list[str]:
    """Every module under `lgsp` that the source imports (lgsp_adapters etc. are not LGSP internals)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "lgsp" or node.module.startswith("lgsp."):
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name == "lgsp" or a.name.startswith("lgsp.")]
    return found


def template_imports(source: str) -> list[str]:
    """The same for a scaffold template, which is not Python until rendered: its import lines."""
    return re.findall(r"^\s*(?:from|import)\s+(lgsp(?:\.[\w.]+)?)\b", source, re.M)


def test_built_in_adapters_and_the_scaffold_import_only_the_sdk():
    assert len(ADAPTER_FILES) > 10 and SCAFFOLD_FILES
    found = {f: lgsp_imports(f.read_text()) for f in ADAPTER_FILES}
    found |= {f: template_imports(f.read_text()) for f in SCAFFOLD_FILES}
    assert any("lgsp.sdk" in mods for mods in found.values())
    offenders = {str(f.relative_to(ROOT)): bad for f, mods in found.items() if (bad := [m for m in mods if m != "lgsp.sdk"])}
    assert offenders == {}, "adapters must import LGSP only through lgsp.sdk"


def test_the_checker_sees_a_forbidden_import():
    source = "from lgsp.pipeline.minimize import PAGE\nimport lgsp.soap\nfrom lgsp_adapters import x\n"
    assert lgsp_imports(source) == ["lgsp.pipeline.minimize", "lgsp.soap"]
    assert template_imports(source + "class {{name}}:\n    from lgsp.audit import writer\n") == [
        "lgsp.pipeline.minimize", "lgsp.soap", "lgsp.audit"]


def test_every_name_the_sdk_promises_exists():
    missing = [name for name in lgsp.sdk.__all__ if not hasattr(lgsp.sdk, name)]
    assert missing == []
