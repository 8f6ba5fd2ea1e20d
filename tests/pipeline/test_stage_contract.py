"""The stage contract (lgsp/pipeline/stage.py): one signature for every stage, the guarantees
of earlier stages read through Exchange's bound_* properties, the audit record's type tied to
the hashed columns."""
from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace

import pytest

from lgsp.audit.writer import BODY, HASHED_FIELDS, WRITER_FIELDS, AuditRecord
from lgsp.pipeline.exchange import Exchange, StageOrderError
from lgsp.pipeline.identity import Identity
from lgsp.pipeline.run import IDENTIFY, PIPELINES, STAGES, run_stages
from lgsp.registry import Snapshot


def _all_stages():
    return {stage for pipeline in (STAGES, IDENTIFY, *PIPELINES.values()) for stage in pipeline}


@pytest.mark.parametrize("stage", sorted(_all_stages(), key=lambda s: s.__qualname__), ids=lambda s: s.__name__)
def test_every_stage_has_the_one_signature(stage):
    assert inspect.iscoroutinefunction(stage), f"{stage.__name__} must be `async def`"
    assert list(inspect.signature(stage).parameters) == ["ex", "ctx"]


def test_the_pipeline_runs_in_the_documented_order():
    assert [s.__name__ for s in STAGES] == ["check_password", "identify", "resolve", "authorize", "limit",
                                            "validate", "invoke", "to_canonical", "minimize"]


@pytest.mark.parametrize(("prop", "stage"), [
    ("bound_identity", "identify"), ("bound_client", "identify"), ("bound_service", "resolve"),
    ("bound_adapter", "resolve"), ("bound_grant", "authorize"), ("bound_result", "invoke"),
])
def test_reading_what_a_stage_has_not_set_is_a_clear_internal_error(prop, stage):
    ex = Exchange(door="rest", request_id="r-1", service_name="s", params={})
    with pytest.raises(StageOrderError, match=stage):
        getattr(ex, prop)


def test_a_stage_run_out_of_order_ends_the_exchange_as_internal_error(caplog):
    from lgsp.pipeline.authorize import authorize

    ex = Exchange(door="rest", request_id="r-2", service_name="s", params={})
    gw = SimpleNamespace(registry=SimpleNamespace(snapshot=Snapshot()))
    asyncio.run(run_stages(ex, gw, (authorize,)))  # authorize without identify and resolve before it
    assert ex.error is not None and ex.error.code == "internal.error"
    assert "before the resolve stage" in caplog.text


def test_identity_from_token_claims_keeps_what_the_stages_use():
    claims = {"sub": "clerk", "exp": 2000.0, "iat": 1000.0, "jti": "j-1", "_kid": "k1",
              "_scopes": frozenset({"a.b"}), "cnf": {"x5t#S256": "abc"}}
    identity = Identity.from_claims(claims)
    assert (identity.client_id, identity.scopes, identity.expires_at, identity.issued_at) == \
        ("clerk", frozenset({"a.b"}), 2000.0, 1000.0)
    assert (identity.jti, identity.kid, identity.cnf) == ("j-1", "k1", {"x5t#S256": "abc"})
    assert Identity.from_claims({**claims, "cnf": "not an object", "jti": 7}).cnf is None
    with pytest.raises(AttributeError):
        identity.client_id = "someone-else"  # type: ignore[misc]


def test_the_audit_record_type_is_the_hashed_columns():
    """A column added to the hash must be added to the record's type, in the same place, and back."""
    keys = [k for k in AuditRecord.__annotations__ if k != BODY]
    assert (*WRITER_FIELDS, *keys) == HASHED_FIELDS
    assert BODY in AuditRecord.__annotations__


def test_a_refused_exchange_is_freed_without_the_garbage_collector():
    """A stage's refusal is kept on the exchange without its traceback: with it, the traceback's frames
    held the exchange that held the error, a cycle per refusal that the collector freed in pauses of
    20-40 ms under a flood of refusals (benchmarks/results/2026-12-01-fairness-gc.md)."""
    import gc
    import weakref

    from lgsp.errors import ExchangeError

    def deep(n: int) -> None:
        if n:
            deep(n - 1)
        raise ExchangeError("rate.limited", "over the limit")

    async def over_limit(ex, ctx):
        deep(3)

    gw = SimpleNamespace(registry=SimpleNamespace(snapshot=Snapshot()))
    gc.disable()
    try:
        ex = Exchange(door="rest", request_id="r-3", service_name="s", params={})
        asyncio.run(run_stages(ex, gw, (over_limit,)))  # type: ignore[arg-type]
        assert ex.error is not None and ex.error.code == "rate.limited"
        assert ex.error.__traceback__ is None
        freed = weakref.ref(ex)
        del ex
        assert freed() is None, "the refused exchange is still held (a reference cycle)"
    finally:
        gc.enable()
