"""The lint ratchet behind scripts/lint: ruff and mypy findings may only go down.

lint-baseline.json counts the findings not yet fixed, per tool, file and code. A run fails when
any (tool, file, code) has more findings than the baseline allows, and prints the findings of
that file and code so the new one can be found; fewer is reported, to be locked in with --update.
Counting per file and code (not per line) keeps the baseline stable when code moves.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "lint-baseline.json"
BIN = Path(sys.executable).parent
# path:line: error: message  [code]   (mypy's default one-line output)
_MYPY_LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*?)\s+\[(?P<code>[a-z0-9-]+)\]$")

Key = tuple[str, str, str]  # tool, path, code


def ruff() -> dict[Key, list[str]]:
    run = subprocess.run([str(BIN / "ruff"), "check", "--output-format", "json", "--exit-zero", "."],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    found: dict[Key, list[str]] = {}
    for item in json.loads(run.stdout):
        path = Path(item["filename"]).resolve().relative_to(ROOT).as_posix()
        where = f"{path}:{item['location']['row']}: {item['code']} {item['message']}"
        found.setdefault(("ruff", path, item["code"] or "syntax"), []).append(where)
    return found


def mypy() -> dict[Key, list[str]]:
    run = subprocess.run([str(BIN / "mypy"), "--no-pretty", "--no-error-summary", "--show-error-codes"],
                         cwd=ROOT, capture_output=True, text=True)
    if run.returncode not in (0, 1):  # 2: mypy itself failed (bad config, crash)
        sys.exit(f"mypy failed:\n{run.stdout}{run.stderr}")
    found: dict[Key, list[str]] = {}
    for line in run.stdout.splitlines():
        m = _MYPY_LINE.match(line)
        if m:
            found.setdefault(("mypy", m["path"], m["code"]), []).append(line)
    return found


def load_baseline() -> Counter[Key]:
    if not BASELINE.exists():
        return Counter()
    data = json.loads(BASELINE.read_text(encoding="utf-8"))
    return Counter({(tool, path, code): n for tool, files in data.items()
                    for path, codes in files.items() for code, n in codes.items()})


def write_baseline(found: dict[Key, list[str]]) -> None:
    data: dict[str, dict[str, dict[str, int]]] = {"ruff": {}, "mypy": {}}
    for (tool, path, code), items in sorted(found.items()):
        data[tool].setdefault(path, {})[code] = len(items)
    BASELINE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="rewrite the baseline from the current findings")
    args = parser.parse_args()
    found = {**ruff(), **mypy()}
    if args.update:
        write_baseline(found)
        print(f"lint-baseline.json: {sum(map(len, found.values()))} findings")
        return 0
    allowed = load_baseline()
    new = {key: items for key, items in found.items() if len(items) > allowed.get(key, 0)}
    fixed = sum(max(0, n - len(found.get(key, []))) for key, n in allowed.items())
    for (tool, path, code), items in sorted(new.items()):
        limit = allowed.get((tool, path, code), 0)
        print(f"{tool}: {path}: {len(items)} {code} finding(s), the baseline allows {limit}:")
        for where in items:
            print(f"  {where}")
    if fixed:
        print(f"{fixed} finding(s) of the baseline are fixed: run scripts/lint --update to lock that in.")
    total = sum(map(len, found.values()))
    print(f"lint: {total} known finding(s), {sum(len(v) - allowed.get(k, 0) for k, v in new.items())} new.")
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
