#!/usr/bin/env python3
"""Offline checks of the LGSP Helm chart, for machines without a `helm` binary.

1. Chart.yaml and values.yaml parse (PyYAML) and carry the fields Helm needs.
2. In every template the {{ ... }} actions are balanced, if/range/with/define
   blocks close, every `include` names a defined template, and every
   `.Values.a.b` path (also through `$x := .Values.a` variables) exists in
   values.yaml.
3. The chart renders, through a small interpreter of the Go-template and Sprig
   subset it uses, into YAML documents that parse, for a few sets of values.

The interpreter follows Helm where it matters here: whitespace trimming, numbers
from values files read as float64 (printed the Go way), a missing map key read as
nil, `fail`, `include`, `toYaml`. It is not Helm: `helm lint` and `helm template`
stay the reference wherever a real helm is at hand.

Usage:
    check_chart.py                      run the checks, exit 1 on any problem
    check_chart.py --render [--set a.b=v ...] [-f values.yaml]
                                        print the rendered manifests
"""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import sys
from decimal import Decimal
from pathlib import Path

import yaml

CHART_DIR = Path(__file__).resolve().parent / "lgsp"


class ChartError(Exception):
    """A template that cannot be parsed or executed."""


class TemplateFail(ChartError):
    """The chart called `fail` (a configuration the chart refuses)."""


# ----------------------------------------------------------------------------- loading
def load_chart(chart_dir: Path = CHART_DIR) -> tuple[dict, dict, dict[str, str]]:
    """Chart.yaml, values.yaml and the template sources keyed by file name."""
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8"))
    values = yaml.safe_load((chart_dir / "values.yaml").read_text(encoding="utf-8")) or {}
    templates = {
        p.name: p.read_text(encoding="utf-8")
        for p in sorted((chart_dir / "templates").iterdir())
        if p.is_file() and p.suffix in (".yaml", ".yml", ".tpl", ".txt")
    }
    return chart, values, templates


# ----------------------------------------------------------------------------- static checks
ACTION_RE = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
COMMENT_RE = re.compile(r"^/\*.*\*/$", re.S)
VALUES_RE = re.compile(r"(?<![\w$])\$?\.Values((?:\.[A-Za-z_]\w*)+)")
VAR_DECL_RE = re.compile(r"\$([A-Za-z_]\w*)\s*:=\s*(?:\$?\.Values|\$([A-Za-z_]\w*))((?:\.[A-Za-z_]\w*)+)")
VAR_USE_RE = re.compile(r"\$([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*)+)")
INCLUDE_RE = re.compile(r"\b(?:include|template)\s+\"([^\"]+)\"")
DEFINE_RE = re.compile(r"\{\{-?\s*define\s+\"([^\"]+)\"")


def _actions(source: str) -> list[str]:
    """The inner text of every non-comment action."""
    out = []
    for m in ACTION_RE.finditer(source):
        body = m.group(2).strip()
        if not COMMENT_RE.match(body):
            out.append(body)
    return out


def _delimiters_balanced(name: str, source: str) -> list[str]:
    errors, depth, line = [], 0, 1
    i = 0
    while i < len(source):
        two = source[i:i + 2]
        if two == "{{":
            if depth:
                errors.append(f"{name}:{line}: '{{{{' inside an open action")
            depth += 1
            i += 2
            continue
        if two == "}}" and depth:
            depth -= 1
            i += 2
            continue
        if two == "}}" and not depth:
            errors.append(f"{name}:{line}: '}}}}' without an opening '{{{{'")
            i += 2
            continue
        if source[i] == "\n":
            line += 1
        i += 1
    if depth:
        errors.append(f"{name}: an action is not closed at end of file")
    return errors


def _blocks_balanced(name: str, source: str) -> list[str]:
    errors, stack = [], []
    for body in _actions(source):
        word = body.split(None, 1)[0] if body.split() else ""
        if word in ("if", "range", "with", "define", "block"):
            stack.append(word)
        elif word == "else":
            if not stack or stack[-1] not in ("if", "range", "with"):
                errors.append(f"{name}: 'else' outside if/range/with")
        elif word == "end":
            if not stack:
                errors.append(f"{name}: 'end' without an open block")
            else:
                stack.pop()
    if stack:
        errors.append(f"{name}: unclosed block(s): {', '.join(stack)}")
    return errors


def _path_exists(values, path: list[str]) -> bool:
    node = values
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _values_paths(name: str, source: str, values: dict) -> list[str]:
    errors = []
    code = "\n".join(_actions(source))
    for m in VALUES_RE.finditer(code):
        path = m.group(1).lstrip(".").split(".")
        if not _path_exists(values, path):
            errors.append(f"{name}: .Values.{'.'.join(path)} is not in values.yaml")
    # Variables bound to a values path, directly or through another such variable.
    variables: dict[str, list[str]] = {}
    for m in VAR_DECL_RE.finditer(code):
        var, source_var, rest = m.group(1), m.group(2), m.group(3).lstrip(".").split(".")
        if source_var is None:
            variables[var] = rest
        elif source_var in variables:
            variables[var] = variables[source_var] + rest
    for m in VAR_USE_RE.finditer(code):
        var, rest = m.group(1), m.group(2).lstrip(".").split(".")
        if var in variables and not _path_exists(values, variables[var] + rest):
            errors.append(f"{name}: ${var}.{'.'.join(rest)} (.Values.{'.'.join(variables[var] + rest)}) "
                          "is not in values.yaml")
    return errors


def static_check(chart_dir: Path = CHART_DIR) -> list[str]:
    """Problems found without rendering; an empty list when all is well."""
    errors: list[str] = []
    try:
        chart, values, templates = load_chart(chart_dir)
    except (OSError, yaml.YAMLError) as exc:
        return [f"cannot load the chart: {exc}"]
    if not isinstance(chart, dict):
        return ["Chart.yaml is not a mapping"]
    if chart.get("apiVersion") != "v2":
        errors.append("Chart.yaml: apiVersion must be v2 (Helm 3)")
    for key in ("name", "version", "appVersion"):
        if not chart.get(key):
            errors.append(f"Chart.yaml: {key} is missing")
    if chart.get("name") != chart_dir.name:
        errors.append(f"Chart.yaml: name {chart.get('name')!r} differs from the directory {chart_dir.name!r}")
    if not isinstance(values, dict):
        errors.append("values.yaml is not a mapping")
        values = {}
    defined = {d for src in templates.values() for d in DEFINE_RE.findall(src)}
    for name, source in templates.items():
        delimiter_errors = _delimiters_balanced(name, source)
        errors += delimiter_errors
        if delimiter_errors:
            continue
        errors += _blocks_balanced(name, source)
        errors += _values_paths(name, source, values)
        for included in INCLUDE_RE.findall("\n".join(_actions(source))):
            if included not in defined:
                errors.append(f"{name}: include of undefined template {included!r}")
    if "NOTES.txt" not in templates:
        errors.append("templates/NOTES.txt is missing")
    return errors


# ----------------------------------------------------------------------------- Go values
def _go_float(f: float) -> str:
    """fmt's %v of a float64: shortest digits, exponent form from 1e+06 up or below 1e-04."""
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(f)).normalize().as_tuple()
    exp10 = len(digits) + exponent - 1
    text = "".join(map(str, digits))
    if exp10 < -4 or exp10 >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        out = f"{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    else:
        out = format(Decimal(repr(abs(f))), "f")
        if "." in out:
            out = out.rstrip("0").rstrip(".")
    return ("-" if sign else "") + out


def _go_str(v) -> str:
    """How a value prints in a template (Helm turns <no value> into "")."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, (int, str)):
        return str(v)
    if isinstance(v, list):
        return "[" + " ".join(_go_str(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_go_str(v[k])}" for k in sorted(v)) + "]"
    raise ChartError(f"cannot print {type(v).__name__}")


def _truth(v) -> bool:
    """Go's truth: false, 0, nil and empty strings, lists and maps are false."""
    if v is None or isinstance(v, bool):
        return bool(v)
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return True


def _floats(v):
    """Numbers as Helm holds them after reading a values file: float64."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return float(v)
    if isinstance(v, dict):
        return {k: _floats(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_floats(x) for x in v]
    return v


def _plain(v):
    """For toYaml: whole floats back to ints (JSON encoding prints 80.0 as 80)."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return int(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _to_int(v) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return int(v)
    if isinstance(v, str):
        try:
            return int(float(v)) if v.strip() else 0
        except ValueError:
            return 0
    return 0


def _number_kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return type(v).__name__


def _compare(a, b, op: str) -> bool:
    ka, kb = _number_kind(a), _number_kind(b)
    if ka != kb:  # Go's text/template refuses to compare an int with a float64
        raise ChartError(f"incompatible types for comparison: {ka} {op} {kb}")
    if op in ("eq", "ne"):
        return (a == b) == (op == "eq")
    return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]


def _printf(fmt: str, *args) -> str:
    out, i, n = [], 0, 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        verb = fmt[i + 1]
        i += 2
        if verb == "%":
            out.append("%")
            continue
        arg = args[n] if n < len(args) else None
        n += 1
        if verb in "sv":
            out.append(_go_str(arg))
        elif verb == "d":
            out.append(str(_to_int(arg)))
        elif verb == "q":
            out.append(_quote(arg))
        else:
            raise ChartError(f"printf verb %{verb} is not supported by this checker")
    return "".join(out)


def _quote(v) -> str:
    s = _go_str(v)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def _to_yaml(v) -> str:
    if v is None:
        return "null"
    text = yaml.safe_dump(_plain(v), default_flow_style=False, sort_keys=True, allow_unicode=True)
    if text.endswith("\n...\n"):
        text = text[:-4]
    return text[:-1] if text.endswith("\n") else text


def _indent(n: int, s: str) -> str:
    pad = " " * _to_int(n)
    return pad + s.replace("\n", "\n" + pad)


def _go_print(*args) -> str:
    out = ""
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out += " "
        out += _go_str(a)
    return out


def _empty(v) -> bool:
    return not _truth(v)


def _default(d, *given):
    return d if not given or _empty(given[0]) else given[0]


def _fail(msg):
    raise TemplateFail(_go_str(msg))


def _required(msg, v):
    if v is None or v == "":
        raise TemplateFail(_go_str(msg))
    return v


def _ternary(vt, vf, cond):
    if not isinstance(cond, bool):
        raise ChartError("ternary: the condition must be a bool")
    return vt if cond else vf


def _b64enc(s):
    if not isinstance(s, str):
        raise ChartError("b64enc wants a string")
    return base64.b64encode(s.encode()).decode()


def _kind_of(v) -> str:
    return {"bool": "bool", "int": "int", "float": "float64", "string": "string",
            "list": "slice", "dict": "map", "NoneType": "invalid"}.get(_number_kind(v), _number_kind(v))


def _dict(*kv):
    if len(kv) % 2:
        raise ChartError("dict wants key/value pairs")
    return {_go_str(kv[i]): kv[i + 1] for i in range(0, len(kv), 2)}


FUNCS = {
    "print": _go_print,
    "printf": _printf,
    "quote": _quote,
    "squote": lambda v: "'" + _go_str(v) + "'",
    "toString": _go_str,
    "toYaml": _to_yaml,
    "indent": _indent,
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "default": _default,
    "empty": _empty,
    "not": lambda v: not _truth(v),
    "eq": lambda a, b: _compare(a, b, "eq"),
    "ne": lambda a, b: _compare(a, b, "ne"),
    "lt": lambda a, b: _compare(a, b, "lt"),
    "le": lambda a, b: _compare(a, b, "le"),
    "gt": lambda a, b: _compare(a, b, "gt"),
    "ge": lambda a, b: _compare(a, b, "ge"),
    "len": lambda v: len(v),
    "int": _to_int,
    "int64": _to_int,
    "float64": lambda v: float(v),
    "trunc": lambda n, s: s[:_to_int(n)] if _to_int(n) >= 0 else s[_to_int(n):],
    "trimSuffix": lambda suf, s: s[: -len(suf)] if suf and s.endswith(suf) else s,
    "trimPrefix": lambda pre, s: s[len(pre):] if pre and s.startswith(pre) else s,
    "trim": lambda s: s.strip(),
    "lower": lambda s: _go_str(s).lower(),
    "upper": lambda s: _go_str(s).upper(),
    "replace": lambda old, new, s: s.replace(old, new),
    "contains": lambda sub, s: sub in s,
    "hasPrefix": lambda pre, s: s.startswith(pre),
    "hasSuffix": lambda suf, s: s.endswith(suf),
    "join": lambda sep, items: sep.join(_go_str(x) for x in (items or [])),
    "list": lambda *items: list(items),
    "dict": _dict,
    "first": lambda items: items[0] if items else None,
    "hasKey": lambda d, k: k in d,
    "ternary": _ternary,
    "fail": _fail,
    "required": _required,
    "b64enc": _b64enc,
    "sha256sum": lambda s: hashlib.sha256(_go_str(s).encode()).hexdigest(),
    "kindIs": lambda kind, v: _kind_of(v) == kind,
    "kindOf": _kind_of,
}


# ----------------------------------------------------------------------------- parsing
TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<decl>:=)
  | (?P<assign>=)
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_]\w*)*)
  | (?P<field>(?:\.[A-Za-z_]\w*)+|\.)
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<pipe>\|)
  | (?P<comma>,)
""", re.X)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = TOKEN_RE.match(text, pos)
        if not m:
            raise ChartError(f"cannot read {text[pos:pos + 20]!r} in action {{{{ {text} }}}}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


class Pipeline:
    def __init__(self, decl: list[str], assign: bool, commands: list[list]):
        self.decl, self.assign, self.commands = decl, assign, commands


def _parse_pipeline(toks: list[tuple[str, str]]) -> Pipeline:
    decl, assign = [], False
    # `$x :=`, `$x =`, `$i, $v :=`
    j = 0
    names = []
    while j < len(toks) and toks[j][0] == "var" and "." not in toks[j][1]:
        names.append(toks[j][1])
        if j + 1 < len(toks) and toks[j + 1][0] == "comma":
            j += 2
            continue
        break
    if names and j + 1 < len(toks) and toks[j + 1][0] in ("decl", "assign"):
        decl, assign = names, toks[j + 1][0] == "assign"
        toks = toks[j + 2:]
    commands, current, depth, group = [], [], 0, []
    for kind, text in toks:
        if depth:
            if kind == "lp":
                depth += 1
            elif kind == "rp":
                depth -= 1
                if not depth:
                    current.append(("pipe", _parse_pipeline(group)))
                    group = []
                    continue
            group.append((kind, text))
        elif kind == "lp":
            depth = 1
        elif kind == "rp":
            raise ChartError("unbalanced ')'")
        elif kind == "pipe":
            if not current:
                raise ChartError("empty command in pipeline")
            commands.append(current)
            current = []
        else:
            current.append(_operand(kind, text))
    if depth:
        raise ChartError("unbalanced '('")
    if current:
        commands.append(current)
    if not commands:
        raise ChartError("empty pipeline")
    return Pipeline(decl, assign, commands)


def _operand(kind: str, text: str):
    if kind == "str":
        return ("const", json.loads(text))
    if kind == "raw":
        return ("const", text[1:-1])
    if kind == "num":
        return ("const", float(text) if "." in text else int(text))
    if kind == "field":
        return ("field", [] if text == "." else text[1:].split("."))
    if kind == "var":
        name, *fields = text.split(".")
        return ("var", name, fields)
    if kind == "ident":
        if text in ("true", "false"):
            return ("const", text == "true")
        if text == "nil":
            return ("const", None)
        return ("func", text)
    raise ChartError(f"unexpected {text!r}")


# Nodes: ("text", s) | ("action", Pipeline) | ("if", [(Pipeline, body)], else_body)
#        | ("range"|"with", Pipeline, body, else_body); `define` bodies go to a name table.
def _lex(source: str) -> list[tuple[str, str]]:
    items, pos, trim_next = [], 0, False
    for m in ACTION_RE.finditer(source):
        text = source[pos:m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            items.append(("text", text))
        body = m.group(2).strip()
        if not COMMENT_RE.match(body):
            items.append(("action", body))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = source[pos:]
    if trim_next:
        tail = tail.lstrip(" \t\r\n")
    if tail:
        items.append(("text", tail))
    return items


def parse_template(source: str, defines: dict) -> list:
    """The node list of a template; `define` blocks go into `defines`."""
    items = _lex(source)
    pos = 0

    def block(stop: tuple[str, ...]) -> tuple[list, str, str]:
        nonlocal pos
        nodes = []
        while pos < len(items):
            kind, text = items[pos]
            pos += 1
            if kind == "text":
                nodes.append(("text", text))
                continue
            word, _, rest = text.partition(" ")
            rest = rest.strip()
            if word in stop:
                return nodes, word, rest
            if word == "if":
                branches, else_body = [(_parse_pipeline(_tokens(rest)), None)], []
                while True:
                    body, ended, tail = block(("else", "end"))
                    if branches[-1][1] is None:
                        branches[-1] = (branches[-1][0], body)
                    else:
                        else_body = body
                    if ended == "end":
                        break
                    if tail.startswith("if "):
                        branches.append((_parse_pipeline(_tokens(tail[3:])), None))
                    elif not tail:
                        branches.append(("else", None))
                    else:
                        raise ChartError(f"unsupported 'else {tail}'")
                real = [(p, b) for p, b in branches if p != "else"]
                else_body = next((b for p, b in branches if p == "else"), [])
                nodes.append(("if", real, else_body))
            elif word in ("range", "with"):
                pipe = _parse_pipeline(_tokens(rest))
                body, ended, _ = block(("else", "end"))
                else_body = []
                if ended == "else":
                    else_body, _, _ = block(("end",))
                nodes.append((word, pipe, body, else_body))
            elif word == "define":
                name = _operand("str", rest)[1] if rest.startswith('"') else rest
                body, _, _ = block(("end",))
                defines[name] = body
            elif word in ("else", "end"):
                raise ChartError(f"'{word}' without an open block")
            elif word in ("block", "template", "break", "continue"):
                raise ChartError(f"'{word}' is not supported by this checker")
            else:
                nodes.append(("action", _parse_pipeline(_tokens(text))))
        if stop:
            raise ChartError(f"missing {{{{ end }}}} (expected one of {stop})")
        return nodes, "", ""

    nodes, _, _ = block(())
    return nodes


# ----------------------------------------------------------------------------- execution
class Renderer:
    def __init__(self, templates: dict[str, str], base_path: str):
        self.trees: dict[str, list] = {}
        for name, source in templates.items():
            try:
                self.trees[f"{base_path}/{name}"] = parse_template(source, self.trees)
            except ChartError as exc:
                raise ChartError(f"{name}: {exc}") from None

    def execute(self, name: str, data) -> str:
        if name not in self.trees:
            raise ChartError(f"no template named {name!r}")
        out: list[str] = []
        self._run(self.trees[name], data, [{"$": data}], out)
        return "".join(out)

    # scopes: a stack of dicts; the first holds "$"
    def _lookup(self, scopes, name):
        for scope in reversed(scopes):
            if name in scope:
                return scope[name]
        raise ChartError(f"undefined variable {name}")

    def _set(self, scopes, name, value, assign: bool):
        if assign:
            for scope in reversed(scopes):
                if name in scope:
                    scope[name] = value
                    return
            raise ChartError(f"assignment to undeclared variable {name}")
        scopes[-1][name] = value

    @staticmethod
    def _field(value, fields, what):
        for f in fields:
            if value is None:
                raise ChartError(f"nil pointer evaluating {what}.{f}")
            if not isinstance(value, dict):
                raise ChartError(f"can't evaluate field {f} in {_number_kind(value)} ({what})")
            value = value.get(f)
            what = f"{what}.{f}"
        return value

    def _arg(self, op, dot, scopes):
        kind = op[0]
        if kind == "const":
            return op[1]
        if kind == "field":
            return self._field(dot, op[1], "")
        if kind == "var":
            return self._field(self._lookup(scopes, op[1]), op[2], op[1])
        if kind == "pipe":
            return self._pipeline(op[1], dot, scopes)
        if kind == "func":
            return self._call(op[1], [], dot, scopes, None, False)
        raise ChartError(f"bad operand {op}")

    def _call(self, name, args, dot, scopes, piped, has_piped):
        if name in ("and", "or"):
            ops = list(args)
            values = []
            for op in ops:
                v = self._arg(op, dot, scopes)
                values.append(v)
                if (name == "and") != _truth(v):
                    return v
            if has_piped:
                return piped
            return values[-1] if values else None
        vals = [self._arg(a, dot, scopes) for a in args]
        if has_piped:
            vals.append(piped)
        if name == "include":
            if len(vals) != 2:
                raise ChartError("include wants a name and a context")
            return self.execute(vals[0], vals[1])
        if name == "lookup":
            return {}
        if name not in FUNCS:
            raise ChartError(f'function "{name}" not defined')
        try:
            return FUNCS[name](*vals)
        except (TemplateFail, ChartError):
            raise
        except Exception as exc:  # a wrong argument type, as Go would refuse it
            raise ChartError(f"error calling {name}: {exc}") from None

    def _pipeline(self, pipe: Pipeline, dot, scopes):
        value, has = None, False
        for cmd in pipe.commands:
            head = cmd[0]
            if head[0] == "func":
                value = self._call(head[1], cmd[1:], dot, scopes, value, has)
            else:
                if len(cmd) > 1 or has:
                    raise ChartError("can't give arguments to a non-function")
                value = self._arg(head, dot, scopes)
            has = True
        return value

    def _eval_decl(self, pipe, dot, scopes):
        value = self._pipeline(pipe, dot, scopes)
        for name in pipe.decl:
            self._set(scopes, name, value, pipe.assign)
        return value

    def _run(self, nodes, dot, scopes, out):
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "action":
                pipe = node[1]
                value = self._eval_decl(pipe, dot, scopes)
                if not pipe.decl:
                    out.append(_go_str(value))
            elif kind == "if":
                for pipe, body in node[1]:
                    scopes.append({})
                    if _truth(self._eval_decl(pipe, dot, scopes)):
                        self._run(body, dot, scopes, out)
                        scopes.pop()
                        break
                    scopes.pop()
                else:
                    scopes.append({})
                    self._run(node[2], dot, scopes, out)
                    scopes.pop()
            elif kind == "with":
                pipe, body, else_body = node[1:]
                scopes.append({})
                value = self._pipeline(pipe, dot, scopes)
                for name in pipe.decl:
                    self._set(scopes, name, value, pipe.assign)
                self._run(body if _truth(value) else else_body, value if _truth(value) else dot, scopes, out)
                scopes.pop()
            elif kind == "range":
                pipe, body, else_body = node[1:]
                collection = self._pipeline(Pipeline([], False, pipe.commands), dot, scopes)
                if isinstance(collection, dict):
                    pairs = [(k, collection[k]) for k in sorted(collection)]
                elif isinstance(collection, list):
                    pairs = list(enumerate(collection))
                elif collection is None:
                    pairs = []
                else:
                    raise ChartError(f"range can't iterate over {_go_str(collection)}")
                if not pairs:
                    scopes.append({})
                    self._run(else_body, dot, scopes, out)
                    scopes.pop()
                for key, item in pairs:
                    scopes.append({})
                    if len(pipe.decl) == 1:
                        scopes[-1][pipe.decl[0]] = item
                    elif len(pipe.decl) == 2:
                        scopes[-1][pipe.decl[0]], scopes[-1][pipe.decl[1]] = key, item
                    self._run(body, item, scopes, out)
                    scopes.pop()
            else:
                raise ChartError(f"unknown node {kind}")


# ----------------------------------------------------------------------------- rendering
def merge(base: dict, override: dict) -> dict:
    """Helm-style merge of values: maps merge key by key, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render(overrides: dict | None = None, *, release: str = "lgsp", namespace: str = "lgsp",
           chart_dir: Path = CHART_DIR) -> dict[str, str]:
    """Rendered text per template file (NOTES.txt included, partials and empty output left out)."""
    chart, values, templates = load_chart(chart_dir)
    values = _floats(merge(values, overrides or {}))
    base_path = f"{chart['name']}/templates"
    renderer = Renderer(templates, base_path)
    top = {
        "Values": values,
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": True,
                    "IsUpgrade": False, "Revision": 1},
        "Chart": {"Name": chart["name"], "Version": str(chart["version"]),
                  "AppVersion": str(chart.get("appVersion", "")), "Description": chart.get("description", "")},
        "Capabilities": {"KubeVersion": {"Version": "v1.30.0", "Major": "1", "Minor": "30"}},
        "Template": {"BasePath": base_path, "Name": ""},
    }
    rendered = {}
    for name in templates:
        if name.startswith("_"):
            continue
        top["Template"]["Name"] = f"{base_path}/{name}"
        text = renderer.execute(f"{base_path}/{name}", top)
        if text.strip():
            rendered[name] = text
    return rendered


def manifests(rendered: dict[str, str]) -> list[dict]:
    """The Kubernetes objects of a render, each checked for the basic fields."""
    objects = []
    for name, text in rendered.items():
        if name == "NOTES.txt":
            continue
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise ChartError(f"{name} does not render to valid YAML: {exc}\n---\n{text}") from None
        for doc in docs:
            if not isinstance(doc, dict) or not all(k in doc for k in ("apiVersion", "kind", "metadata")):
                raise ChartError(f"{name}: a document without apiVersion/kind/metadata")
            if not doc["metadata"].get("name"):
                raise ChartError(f"{name}: {doc['kind']} without a name")
            objects.append(doc)
    return objects


# Value sets every render check goes through: the smallest valid install and one
# with every optional part switched on.
EXAMPLES: dict[str, dict] = {
    "minimal": {
        "database": {"existingSecret": "lgsp-db"},
        "secrets": {"existingSecret": "lgsp-master"},
    },
    "everything": {
        "publicUrl": "https://lgsp.example.gov.vn/",
        "database": {"url": "postgresql://lgsp:pw@pg.example:5432/lgsp"},
        "secrets": {"create": True, "secretKey": "dev-only-secret"},
        "config": {"maxBodyBytes": 10485760},
        "extraEnv": [{"name": "LGSP_AUDIT_BATCH_MAX", "value": "128"}],
        "serviceAccountName": "lgsp",
        "imagePullSecrets": [{"name": "registry"}],
        "dataPlane": {"autoscaling": {"enabled": True, "minReplicas": 3}, "nodeSelector": {"pool": "api"},
                      "podAnnotations": {"a": "b"}, "podLabels": {"tier": "api"}},
        "controlPlane": {"tolerations": [{"key": "k", "operator": "Exists"}]},
        "ingress": {"enabled": True, "className": "nginx", "hosts": ["lgsp.example.gov.vn"],
                    "tls": [{"secretName": "lgsp-tls", "hosts": ["lgsp.example.gov.vn"]}],
                    "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "10m"}},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    },
}


def render_check() -> list[str]:
    errors = []
    for label, overrides in EXAMPLES.items():
        try:
            manifests(render(overrides))
        except ChartError as exc:
            errors.append(f"render with {label} values: {exc}")
    try:
        render({})
        errors.append("render with default values should fail (no database configured)")
    except TemplateFail:
        pass
    except ChartError as exc:
        errors.append(f"render with default values: {exc}")
    return errors


def _parse_set(expr: str) -> dict:
    key, _, raw = expr.partition("=")
    node: dict = {}
    out = node
    parts = key.split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = yaml.safe_load(raw) if raw else ""
    return out


def main(argv: list[str]) -> int:
    if "--render" in argv:
        overrides: dict = {}
        args = [a for a in argv if a != "--render"]
        i = 0
        while i < len(args):
            if args[i] == "--set":
                overrides = merge(overrides, _parse_set(args[i + 1]))
                i += 2
            elif args[i] in ("-f", "--values"):
                overrides = merge(overrides, yaml.safe_load(Path(args[i + 1]).read_text(encoding="utf-8")) or {})
                i += 2
            else:
                print(f"unknown argument {args[i]}", file=sys.stderr)
                return 2
        try:
            rendered = render(overrides)
        except TemplateFail as exc:
            print(f"Error: execution error: {exc}", file=sys.stderr)
            return 1
        for name, text in rendered.items():
            if name != "NOTES.txt":
                print(f"---\n# Source: lgsp/templates/{name}\n{text.strip()}")
        return 0
    errors = static_check()
    if not errors:
        errors = render_check()
    for e in errors:
        print(e, file=sys.stderr)
    print("chart OK" if not errors else f"{len(errors)} problem(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
