#!/usr/bin/env python3
"""Static checks of the LGSP Helm chart that Helm itself does not make.

The chart is rendered by Helm's own engine and validated against the Kubernetes
schemas in tests/deploy/test_helm_render.py; this script adds what rendering lets pass,
above all check 4 (a `.Values` path missing from values.yaml renders as empty,
silently). What is checked:

1. Chart.yaml and values.yaml parse (PyYAML); Chart.yaml has apiVersion v2, a name
   and a version; values.yaml is a mapping.
2. In every template each `{{` is closed by `}}` before the next `{{`, and every
   if/range/with/define/block has its `end` (and every `else` sits in one).
3. Every `include`/`template` of a literal name names a `define`d template.
4. Every `.Values.a.b` path, also through simple variables (`$x := .Values.a`,
   `$y := $x.b`), exists in values.yaml.
5. Each document of templates/*.yaml, once its actions are blanked out, has
   `apiVersion:` and `kind:` at top level (documents made wholly of actions are
   skipped).

Usage: check_chart.py [CHART_DIR]   prints "chart OK", or the findings and exits 1.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

CHART_DIR = Path(__file__).resolve().parent / "lgsp"

ACTION_RE = re.compile(r"\{\{(.*?)\}\}", re.S)
DELIM_RE = re.compile(r"\{\{|\}\}")
OPENERS = ("if", "range", "with", "define", "block")
DEFINE_RE = re.compile(r"define\s+\"([^\"]+)\"")
INCLUDE_RE = re.compile(r"\b(?:include|template)\s+\"([^\"]+)\"")
PATH = r"((?:\.[A-Za-z_]\w*)+)"
VALUES_RE = re.compile(r"(?<![\w$.])\$?\.Values" + PATH)
ANY_DECL_RE = re.compile(r"\$(\w+)\s*:?=")
VALUES_DECL_RE = re.compile(r"\$(\w+)\s*:?=\s*(?:\$?\.Values|\$(\w+))" + PATH)
VAR_USE_RE = re.compile(r"\$(\w+)" + PATH)


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def blank(source: str) -> str:
    """The template with every action removed, its newlines kept (line numbers hold)."""
    return ACTION_RE.sub(lambda m: "\n" * m.group().count("\n"), source)


def actions(name: str, source: str, errors: list[str]) -> list[tuple[int, str]]:
    """(line, inner text without trim markers) of each non-comment action; delimiter faults to errors."""
    out = []
    for m in ACTION_RE.finditer(source):
        if "{{" in m.group(1):
            errors.append(f"{name}:{_line(source, m.start())}: '{{{{' not closed before the next '{{{{'")
            continue
        body = m.group(1).strip().removeprefix("-").removesuffix("-").strip()
        if not body.startswith("/*"):
            out.append((_line(source, m.start()), body))
    blanked = blank(source)
    for m in DELIM_RE.finditer(blanked):
        what = "'{{' never closed" if m.group() == "{{" else "'}}' without an opening '{{'"
        errors.append(f"{name}:{_line(blanked, m.start())}: {what}")
    return out


def check_blocks(name: str, acts: list[tuple[int, str]]) -> list[str]:
    errors, stack = [], []
    for line, body in acts:
        word = (body.split() or [""])[0]
        if word in OPENERS:
            stack.append((word, line))
        elif word == "else" and not (stack and stack[-1][0] in ("if", "range", "with")):
            errors.append(f"{name}:{line}: 'else' outside if/range/with")
        elif word == "end":
            if stack:
                stack.pop()
            else:
                errors.append(f"{name}:{line}: 'end' without an open block")
    return errors + [f"{name}:{line}: unclosed block '{word}' (no matching end)" for word, line in stack]


def _exists(values, path: list[str]) -> bool:
    for key in path:
        if not isinstance(values, dict) or key not in values:
            return False
        values = values[key]
    return True


def check_values(name: str, acts: list[tuple[int, str]], values: dict) -> list[str]:
    errors, bound = [], {}  # variable -> values path it holds
    for line, body in acts:
        for m in VALUES_RE.finditer(body):
            path = m.group(1)[1:].split(".")
            if not _exists(values, path):
                errors.append(f"{name}:{line}: .Values.{'.'.join(path)} is not in values.yaml")
        for m in VAR_USE_RE.finditer(body):
            var, rest = m.group(1), m.group(2)[1:].split(".")
            if var in bound and not _exists(values, bound[var] + rest):
                errors.append(f"{name}:{line}: ${var}.{'.'.join(rest)} "
                              f"(.Values.{'.'.join(bound[var] + rest)}) is not in values.yaml")
        for var in ANY_DECL_RE.findall(body):
            bound.pop(var, None)
        d = VALUES_DECL_RE.fullmatch(body)
        if d and (d.group(2) is None or d.group(2) in bound):
            bound[d.group(1)] = bound.get(d.group(2), []) + d.group(3)[1:].split(".")
    return errors


def check_documents(name: str, source: str) -> list[str]:
    """Top-level apiVersion/kind in each document that has any literal YAML."""
    errors, docs = [], [(1, [])]
    for n, line in enumerate(blank(source).split("\n"), 1):
        if line.startswith("---"):
            docs.append((n + 1, []))
        else:
            docs[-1][1].append(line)
    for start, lines in docs:
        if not any(ln.strip() and not ln.lstrip().startswith("#") for ln in lines):
            continue  # made wholly by actions (or empty)
        for key in ("apiVersion", "kind"):
            if not any(ln.startswith(key + ":") for ln in lines):
                errors.append(f"{name}:{start}: document without a top-level '{key}:'")
    return errors


def static_check(chart_dir: Path = CHART_DIR) -> list[str]:
    """Findings about the chart in chart_dir; an empty list when all is well."""
    chart_dir = Path(chart_dir)
    try:
        chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8"))
        values = yaml.safe_load((chart_dir / "values.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        return [f"cannot load Chart.yaml/values.yaml: {exc}"]
    errors = []
    if not isinstance(chart, dict):
        return ["Chart.yaml is not a mapping"]
    if chart.get("apiVersion") != "v2":
        errors.append("Chart.yaml: apiVersion must be v2 (Helm 3)")
    errors += [f"Chart.yaml: {key} is missing" for key in ("name", "version") if not chart.get(key)]
    if not isinstance(values, dict):
        errors.append("values.yaml is not a mapping")
        values = {}

    sources = {p.name: p.read_text(encoding="utf-8")
               for p in sorted((chart_dir / "templates").glob("*")) if p.is_file()}
    acts = {name: actions(name, src, errors) for name, src in sources.items()}
    defined = {d.group(1) for a in acts.values() for _, body in a if (d := DEFINE_RE.match(body))}
    for name, src in sources.items():
        errors += check_blocks(name, acts[name])
        errors += check_values(name, acts[name], values)
        errors += [f"{name}:{line}: include of undefined template {inc!r}"
                   for line, body in acts[name] for inc in INCLUDE_RE.findall(body) if inc not in defined]
        if name.endswith((".yaml", ".yml")) and not name.startswith("_"):
            errors += check_documents(name, src)
    return errors


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    errors = static_check(Path(argv[0]) if argv else CHART_DIR)
    for e in errors:
        print(e)
    print("chart OK" if not errors else f"{len(errors)} problem(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
