"""The contract test kit behind ``lgsp adapters test NAME --connection C``.

It checks one adapter against one registered connection (a simulator or a real
endpoint) the way the pipeline will use it:

- the adapter loads, the connection's settings pass its settings schema, its
  mapping file compiles and has a section for every operation;
- every declared operation is called with the adapter's ``examples``, which
  must fit the operation's ``params_schema``; the answer must be an
  :class:`AdapterResult` that the mapping turns into canonical JSON;
- a ``not_found_examples`` entry must raise :class:`RecordNotFound`;
- when the endpoint is an LGSP simulator (it answers ``GET /_sim/faults``),
  each fault mode is switched on in turn and must become the matching
  ``Upstream*`` error, never an answer or a stray exception; ``normal`` is
  restored at the end whatever happens.

Everything is reported as rows (subject, check, PASS/FAIL/SKIP, a sentence), so
an integrator reads one table instead of a traceback.
"""
from __future__ import annotations

import asyncio
import importlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

import httpx
import jsonschema
import orjson

from lgsp import plugins
from lgsp.adapter import (
    Adapter,
    AdapterResult,
    CallContext,
    RecordNotFound,
    UpstreamError,
    UpstreamFault,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from lgsp.mapping.compile import CompiledMapping, MappingError, load_mapping

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

#: What each simulator fault mode must become, and how the report says what happened.
EXPECTED_FAULTS: dict[str, tuple[type[UpstreamError], str]] = {
    "slow": (UpstreamTimeout, "a backend slower than the timeout"),
    "down": (UpstreamUnavailable, "a backend that is down"),
    "malformed": (UpstreamMalformed, "an answer cut off halfway"),
    "fault": (UpstreamFault, "an application fault of the backend"),
}
FAULT_TIMEOUT = 1.0   # the per-call timeout the adapter is rebuilt with for fault checks
SLOW_DELAY = 3.0      # how long the simulator stalls in slow mode: well past FAULT_TIMEOUT
GRACE = 5.0           # extra seconds granted beyond the adapter's own timeout before the kit gives up


class ContractError(Exception):
    """The kit cannot start: unknown connection, or one of another adapter."""


@dataclass(frozen=True)
class Check:
    subject: str   # an operation name, or "adapter" / "connection" / "faults"
    name: str
    status: str    # PASS, FAIL or SKIP
    detail: str


@dataclass
class Report:
    adapter: str
    connection: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def add(self, subject: str, name: str, status: str, detail: str) -> None:
        self.checks.append(Check(subject, name, status, detail))

    def table(self) -> str:
        cols = ("subject", "check", "status", "detail")
        rows = [(c.subject, c.name, c.status, c.detail) for c in self.checks]
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(cols[:3])]
        lines = ["  ".join(h.upper().ljust(w) for h, w in zip(cols, widths + [0])).rstrip()]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths + [0])).rstrip() for r in rows]
        return "\n".join(lines)

    def summary(self) -> str:
        count = {s: sum(c.status == s for c in self.checks) for s in (PASS, FAIL, SKIP)}
        verdict = "the contract holds" if self.ok else "the contract is broken"
        return (f"adapter {self.adapter}, connection {self.connection}: {count[PASS]} passed, "
                f"{count[FAIL]} failed, {count[SKIP]} skipped: {verdict}")


# -- loading ---------------------------------------------------------------------------

def load_connection(engine: Any, name: str) -> tuple[str, dict[str, Any]]:
    """(adapter, settings with secrets opened) of a registered connection."""
    from sqlalchemy import select

    from lgsp.connection_secrets import open_secrets
    from lgsp.control.admin import Admin
    from lgsp.storage.schema import connections

    known = {row["name"]: row for row in Admin(engine, "contract-test").list_connections()}
    if name not in known:
        raise ContractError(f"No connection '{name}'; see `lgsp connections list`.")
    # list_connections masks secrets; the adapter needs the real values, in memory only.
    with engine.connect() as conn:
        raw = conn.execute(select(connections.c.settings).where(connections.c.name == name)).scalar_one()
    return known[name]["adapter"], open_secrets(dict(raw))


def simulator_base(settings: Mapping[str, Any]) -> str | None:
    """scheme://host:port of the connection's `endpoint` setting, where a simulator keeps /_sim/."""
    endpoint = settings.get("endpoint")
    if not isinstance(endpoint, str):
        return None
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, UpstreamError):
        return f"{type(exc).__name__} ({exc.code}): {exc.detail}"
    return f"{type(exc).__name__}: {exc}"


# -- the kit ---------------------------------------------------------------------------

class Kit:
    def __init__(self, adapter: str, settings: Mapping[str, Any], connection: str):
        self.adapter_name = adapter
        self.settings = dict(settings)
        self.report = Report(adapter, connection)
        self.cls: type[Adapter] | None = None
        self.mapping: CompiledMapping | None = None
        self.answered: list[str] = []   # operations whose example call answered

    def add(self, subject: str, name: str, status: str, detail: str) -> None:
        self.report.add(subject, name, status, detail)

    async def run(self) -> Report:
        if not self._load_class() or not self._check_settings():
            return self.report
        self._check_mapping_file()
        self._check_simulator_attribute()
        try:
            adapter = self.cls(self.settings)
        except Exception as exc:
            self.add("connection", "build", FAIL, f"The adapter could not be built from the settings: "
                                                  f"{_describe(exc)}.")
            return self.report
        try:
            for op in self.cls.operations:
                await self._check_operation(adapter, op)
        finally:
            await adapter.aclose()
        await self._check_faults()
        return self.report

    # static checks
    def _load_class(self) -> bool:
        try:
            self.cls = plugins.adapter_class(self.adapter_name)
        except Exception as exc:  # a broken plug-in is a finding, not a crash of the kit
            self.add("adapter", "load", FAIL, f"The adapter could not be loaded: {_describe(exc)}.")
            return False
        ops = ", ".join(self.cls.operations) or "none"
        status = PASS if self.cls.operations else FAIL
        self.add("adapter", "load", status, f"{self.cls.__name__} version {self.cls.version}; operations: {ops}.")
        return True

    def _check_settings(self) -> bool:
        try:
            plugins.validate_settings(self.adapter_name, self.settings)
        except plugins.InvalidSettings as exc:
            self.add("connection", "settings", FAIL, f"The settings do not fit the adapter's schema: {exc}.")
            return False
        self.add("connection", "settings", PASS, "The settings fit the adapter's settings_schema.")
        return True

    def _check_mapping_file(self) -> None:
        if self.cls.mapping_file is None:
            self.add("adapter", "mapping file", SKIP, "No mapping_file: answers are taken as canonical as they are.")
            return
        try:
            self.mapping = load_mapping(self.cls.mapping_file)
        except Exception as exc:
            self.add("adapter", "mapping file", FAIL, f"{self.cls.mapping_file} does not compile: {exc}")
            return
        missing = [op for op in self.cls.operations if self._section(op) not in self.mapping.operations]
        astray = [f"{op} names '{o.mapping}'" for op, o in self.cls.operations.items() if o.mapping not in (None, op)]
        if missing:
            self.add("adapter", "mapping file", FAIL, f"No mapping section for {', '.join(missing)}.")
        elif astray:
            self.add("adapter", "mapping file", FAIL, f"Operation.mapping must be the operation's name, the section "
                                                      f"the pipeline uses: {', '.join(astray)}.")
        else:
            self.add("adapter", "mapping file", PASS, "Compiles, with a section for every operation.")

    def _check_simulator_attribute(self) -> None:
        target = self.cls.simulator
        if not target:
            self.add("adapter", "simulator", SKIP, "The adapter declares no simulator.")
            return
        module, _, attr = target.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except Exception as exc:
            self.add("adapter", "simulator", FAIL, f"{target} cannot be imported: {_describe(exc)}.")
            return
        status = PASS if callable(factory) else FAIL
        self.add("adapter", "simulator", status, f"{target} is {'a' if callable(factory) else 'not a'} callable.")

    @staticmethod
    def _section(op: str) -> str:
        # The pipeline's to_canonical stage maps with the section named after the operation.
        return op

    # operations
    async def _check_operation(self, adapter: Adapter, op: str) -> None:
        params = self.cls.examples.get(op)
        if params is None and self.cls.operations[op].writes:
            self.add(op, "example", SKIP, "Changes the backend and has no example declared safe to repeat.")
        elif params is None and op in self.cls.not_found_examples:
            self.add(op, "example", SKIP, "No found example; checked with its not-found example below.")
        elif params is None:
            self.add(op, "example", FAIL, f"No sample params: add '{op}' to the adapter's `examples`.")
        elif self._fits(op, "example", params):
            self.add(op, "example", PASS, f"Fits params_schema: {orjson.dumps(params).decode()}.")
            if await self._check_answer(adapter, op, params):
                self.answered.append(op)
        await self._check_not_found(adapter, op)

    def _fits(self, op: str, check: str, params: Mapping[str, Any]) -> bool:
        schema = self.cls.operations[op].params_schema or {}
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(dict(params)), key=str)
        if errors:
            self.add(op, check, FAIL, f"The sample params do not fit params_schema: {errors[0].message}.")
        return not errors

    async def _check_answer(self, adapter: Adapter, op: str, params: Mapping[str, Any]) -> bool:
        outcome, elapsed = await self._call(adapter, op, params)
        if isinstance(outcome, BaseException):
            self.add(op, "call", FAIL, f"Calling with the example raised {_describe(outcome)}")
            return False
        if not isinstance(outcome, AdapterResult):
            self.add(op, "call", FAIL, f"call() returned {type(outcome).__name__}, not an AdapterResult.")
            return False
        self.add(op, "call", PASS, f"Answered in {elapsed * 1000:.0f} ms (upstream {outcome.upstream or '-'}).")
        return self._check_mapped(op, outcome)

    def _check_mapped(self, op: str, result: AdapterResult) -> bool:
        if self.cls.mapping_file is not None and self.mapping is None:
            self.add(op, "mapping", FAIL, "The answer cannot be mapped: the mapping file does not compile.")
            return False
        try:
            canonical = result.data if self.mapping is None else \
                self.mapping.apply(self._section(op), result.data, meta=result.meta)
            orjson.dumps(canonical)
        except (MappingError, TypeError, KeyError) as exc:
            self.add(op, "mapping", FAIL, f"The answer does not map cleanly: {exc}")
            return False
        if not isinstance(canonical, dict):
            self.add(op, "mapping", FAIL, f"The canonical answer is a {type(canonical).__name__}, not an object.")
            return False
        present = sum(v is not None for v in canonical.values())
        self.add(op, "mapping", PASS, f"Maps to canonical JSON ({present} of {len(canonical)} fields present).")
        return True

    async def _check_not_found(self, adapter: Adapter, op: str) -> None:
        params = self.cls.not_found_examples.get(op)
        if params is None:
            self.add(op, "not found", SKIP, "No not_found_examples entry for this operation.")
            return
        if not self._fits(op, "not found", params):
            return
        outcome, _ = await self._call(adapter, op, params)
        self._expect(op, "not found", outcome, RecordNotFound, "an unknown subject")

    async def _call(self, adapter: Adapter, op: str, params: Mapping[str, Any]) -> tuple[Any, float]:
        """The call's result or the exception it raised, and how long it took."""
        context = CallContext(request_id=f"contract-{uuid.uuid4().hex[:16]}", client_id="lgsp-contract-test",
                              purpose="contract-test")
        budget = float(adapter.settings.get("timeout") or 10) + GRACE
        started = time.perf_counter()
        try:
            outcome: Any = await asyncio.wait_for(adapter.call(op, params, context), budget)
        except asyncio.TimeoutError:
            outcome = TimeoutError(f"call() did not return within {budget:g} s: the adapter ignores its timeout")
        except Exception as exc:
            outcome = exc
        return outcome, time.perf_counter() - started

    def _expect(self, subject: str, name: str, outcome: Any, expected: type[UpstreamError], cause: str,
                op: str | None = None) -> None:
        wanted = f"{expected.__name__} ({expected.code})"
        cause = cause[:1].upper() + cause[1:]
        if isinstance(outcome, expected):
            self.add(subject, name, PASS, f"{cause} gives {_describe(outcome)}")
        elif isinstance(outcome, BaseException):
            self.add(subject, name, FAIL, f"{cause} should give {wanted}, got {_describe(outcome)}")
        elif expected is UpstreamMalformed and op and self._unmappable(op, outcome):
            # The adapter passed the bad data on; the mapping stage still stops it.
            self.add(subject, name, PASS, f"{cause} is answered but refused by the mapping "
                                          f"(the pipeline reports upstream.malformed).")
        else:
            self.add(subject, name, FAIL, f"{cause} should give {wanted}, but call() answered as if all were well.")

    def _unmappable(self, op: str, outcome: Any) -> bool:
        if self.mapping is None or not isinstance(outcome, AdapterResult):
            return False
        try:
            self.mapping.apply(self._section(op), outcome.data, meta=outcome.meta)
        except MappingError:
            return True
        return False

    # faults
    async def _check_faults(self) -> None:
        base = simulator_base(self.settings)
        if base is None:
            self.add("faults", "simulator", SKIP, "The connection has no http(s) `endpoint` setting.")
            return
        if not self.answered:
            self.add("faults", "simulator", SKIP, "No operation answered its example, so faults are not checked.")
            return
        async with httpx.AsyncClient(base_url=base, timeout=3) as sim:
            if not await self._is_simulator(sim, base):
                return
            adapter = self._fast_adapter()
            try:
                for mode, (expected, cause) in EXPECTED_FAULTS.items():
                    await self._check_mode(sim, adapter, mode, expected, cause)
            finally:
                await adapter.aclose()
                await self._restore(sim)

    async def _is_simulator(self, sim: httpx.AsyncClient, base: str) -> bool:
        try:
            r = await sim.get("/_sim/faults")
            state = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            state = None
        if not isinstance(state, dict) or "mode" not in state:
            self.add("faults", "simulator", SKIP, f"{base} is not an LGSP simulator (no /_sim/faults): "
                                                  f"run the kit against the adapter's simulator to check faults.")
            return False
        self.add("faults", "simulator", PASS, f"{base} is an LGSP simulator (fault mode {state['mode']}).")
        return True

    def _fast_adapter(self) -> Adapter:
        """The adapter rebuilt with a short timeout, so the slow mode is checked in a second."""
        try:
            return plugins.build(self.adapter_name, {**self.settings, "timeout": FAULT_TIMEOUT})
        except plugins.InvalidSettings:
            return self.cls(self.settings)  # no `timeout` setting: the slow check will say so

    async def _check_mode(self, sim: httpx.AsyncClient, adapter: Adapter, mode: str,
                          expected: type[UpstreamError], cause: str) -> None:
        if mode == "slow" and adapter.settings.get("timeout") != FAULT_TIMEOUT:
            self.add("faults", mode, SKIP, "The adapter has no `timeout` setting, so a slow backend cannot be "
                                           "checked quickly.")
            return
        r = await sim.post("/_sim/faults", json={"mode": mode, "delay": SLOW_DELAY if mode == "slow" else 0})
        if r.status_code != 200:
            self.add("faults", mode, FAIL, f"The simulator refused fault mode {mode!r}: HTTP {r.status_code}.")
            return
        try:
            for op in self.answered:
                outcome, _ = await self._call(adapter, op, self.cls.examples[op])
                self._expect(op, f"fault {mode}", outcome, expected, cause, op)
        finally:
            await sim.post("/_sim/faults", json={"mode": "normal"})

    async def _restore(self, sim: httpx.AsyncClient) -> None:
        try:
            r = await sim.post("/_sim/faults", json={"mode": "normal"})
            ok = r.status_code == 200 and r.json().get("mode") == "normal"
        except (httpx.HTTPError, ValueError):
            ok = False
        self.add("faults", "restore", PASS if ok else FAIL,
                 "The simulator is back in normal mode." if ok else "The simulator could not be set back to normal.")


def run(adapter: str, settings: Mapping[str, Any], connection: str) -> Report:
    """Run every check of the kit; the report says what passed, failed or was skipped."""
    return asyncio.run(Kit(adapter, settings, connection).run())
