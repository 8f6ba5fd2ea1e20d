"""`lgsp adapters new NAME`: a working third-party adapter package from templates.

The templates are data of the `lgsp` package (lgsp/scaffold_templates/adapter/),
so they ship in the wheel. Python templates end in `.py.tmpl`: the template tree
must not look like packages to setuptools or to pytest. Placeholders are
`{{name}}`-style and replaced with str.replace: the templates are Python, TOML
and YAML full of braces and dollars, which a format language would trip on.
"""
from __future__ import annotations

import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

from lgsp import plugins

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
SUFFIX = ".tmpl"


class ScaffoldError(ValueError):
    """The package cannot be made; the message says why."""


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise ScaffoldError(
            f"{name!r} is not a valid adapter name: use 1-40 lower-case letters, digits and underscores, "
            f"starting with a letter (e.g. land_registry).")
    if name in plugins.installed():
        raise ScaffoldError(f"An adapter named {name!r} is already installed (see `lgsp adapters list`): "
                            f"choose another name.")


def placeholders(name: str) -> dict[str, str]:
    return {
        "{{name}}": name,
        "{{package}}": f"lgsp_adapter_{name}",
        "{{dist}}": f"lgsp-adapter-{name.replace('_', '-')}",
        "{{class_name}}": "".join(part.capitalize() for part in name.split("_") if part) + "Adapter",
    }


def _templates(node: Traversable, prefix: PurePosixPath = PurePosixPath()):
    for child in sorted(node.iterdir(), key=lambda t: t.name):
        if child.is_dir():
            yield from _templates(child, prefix / child.name)
        elif child.name.endswith(SUFFIX):
            yield prefix / child.name[: -len(SUFFIX)], child


def render(name: str) -> dict[PurePosixPath, str]:
    """Relative path -> text of every file of the package."""
    values = placeholders(name)
    out = {}
    for rel, template in _templates(files("lgsp") / "scaffold_templates" / "adapter"):
        if rel.parts[0] == "package":
            rel = PurePosixPath(values["{{package}}"], *rel.parts[1:])
        text = template.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace(key, value)
        out[rel] = text
    return out


def create(name: str, directory: Path | None = None) -> Path:
    """Write the package into `directory` (default ./lgsp-adapter-NAME), which must be new or empty."""
    check_name(name)
    target = Path(directory) if directory else Path.cwd() / placeholders(name)["{{dist}}"]
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(f"{target} already exists and is not an empty directory: nothing was written.")
    files_ = render(name)
    for rel, text in files_.items():
        path = target.joinpath(*rel.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target
