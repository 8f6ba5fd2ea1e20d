"""The audit trail against someone who can write the database (issue 7, section 1).

Each test writes real chains with the gateway's writer into a fresh database
(SQLite, or PostgreSQL when LGSP_TEST_DATABASE_URL is set), then forges them in
SQL the way a database writer would — with every hash recomputed and every seal
re-signed where the forgery calls for it — and runs `lgsp audit verify`: each
forgery must be a finding that names the chain, with exit 1.
"""
from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, insert, select, update

from lgsp.audit import seals, witness
from lgsp.audit import trust as audit_trust
from lgsp.audit.export import export_jsonl
from lgsp.audit.verify import verify_database, verify_file
from lgsp.audit.writer import AuditWriter, record_hash
from lgsp.crypto import fernet
from lgsp.storage import engine_for
from lgsp.storage.schema import audit_chain_bases, audit_keys, audit_records, audit_seals


@pytest.fixture
def trail(fresh_db_url, tmp_path, monkeypatch):
    """A fresh database with its own trust file and witness directory (outside the database)."""
    monkeypatch.setenv("LGSP_AUDIT_TRUST", str(tmp_path / "trust" / "audit-trust.jsonl"))
    monkeypatch.setenv("LGSP_AUDIT_WITNESS", str(tmp_path / "witness"))
    return engine_for(fresh_db_url)


def record(i: int) -> dict:
    return {"at": dt.datetime.now(dt.timezone.utc), "kind": "exchange", "request_id": f"req-{i}", "door": "rest",
            "client_id": "clerk", "officer": "officer-1", "purpose": "administrative-procedure",
            "service": "population.citizen.get", "outcome": "ok", "status": 200, "fields": ["full_name"],
            "latency_ms": 1.5, "subject_hash": "ab" * 32}


def write_chain(engine, n: int = 30, seal_every: int = 10) -> str:
    writer = AuditWriter(engine, batch_max=1, seal_every=seal_every)
    for i in range(n):
        writer.commit_sync(record(i))
    writer.close()
    return writer.chain


def rows_of(engine, chain: str) -> list[dict]:
    with engine.connect() as conn:
        return [r._asdict() for r in conn.execute(
            select(audit_records).where(audit_records.c.chain == chain).order_by(audit_records.c.seq))]


def seals_of(engine, chain: str) -> list[dict]:
    with engine.connect() as conn:
        return [r._asdict() for r in conn.execute(
            select(audit_seals).where(audit_seals.c.chain == chain).order_by(audit_seals.c.seq))]


def rewrite_and_rehash(engine, chain: str, seq: int, **changes) -> dict[int, str]:
    """Change the record at `seq` and recompute every hash after it, as an attacker who knows the hash function."""
    rows = rows_of(engine, chain)
    prev = rows[seq - 2]["hash"] if seq > 1 else "0" * 64
    hashes = {}
    with engine.begin() as conn:
        for row in rows[seq - 1:]:
            row = dict(row, prev_hash=prev, **(changes if row["seq"] == seq else {}))
            row["hash"] = prev = hashes[row["seq"]] = record_hash(row)
            conn.execute(update(audit_records).where(audit_records.c.id == row["id"])
                         .values(prev_hash=row["prev_hash"], hash=row["hash"],
                                 **(changes if row["seq"] == seq else {})))
    return hashes


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lgsp.cli", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def cli_verify(engine, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    url = engine.url.render_as_string(hide_password=False)
    return cli("audit", "verify", *args, env={"LGSP_DATABASE_URL": url, **(env or {})})


def findings(report, kind: str) -> list:
    return [f for f in report.findings if f.kind == kind]


def test_untouched_trail_verifies_and_is_witnessed(trail, tmp_path):
    chains = [write_chain(trail), write_chain(trail, 5)]
    report = verify_database(trail)
    assert report.ok, report.findings
    entries = list(witness.read(tmp_path / "witness", witness.database_id(trail.url)))
    assert {e.seal["chain"] for e in entries} == set(chains)
    assert [e.seal["seq"] for e in entries if e.seal["chain"] == chains[0]] == [0, 10, 20, 30, 30]
    assert (tmp_path / "trust" / "audit-trust.jsonl").exists()
    done = cli_verify(trail)
    assert done.returncode == 0 and "0 findings" in done.stdout, done.stdout + done.stderr


def test_attacker_key_rewritten_record_and_resigned_seals_is_caught(trail):
    """Forgery (a): insert an own Ed25519 key, rewrite a record, recompute the chain, re-sign every seal."""
    chain = write_chain(trail)
    evil = Ed25519PrivateKey.generate()
    kid = "seal-20260101-evil0001"
    with trail.begin() as conn:
        conn.execute(insert(audit_keys).values(kid=kid, public_key=seals.public_hex(evil), private_key="-",
                                               status="retired", created_at=dt.datetime.now(dt.timezone.utc)))
    hashes = rewrite_and_rehash(trail, chain, 5, purpose="curiosity")
    forger = seals.Signer(kid, evil)
    with trail.begin() as conn:
        for seal in seals_of(trail, chain):
            head = hashes.get(seal["seq"], seal["head_hash"])
            forged = forger.seal(chain, seal["seq"], head, seal["reason"])
            conn.execute(update(audit_seals).where(audit_seals.c.id == seal["id"]).values(
                head_hash=head, kid=kid, signature=forged["signature"], at=forged["at"]))
    report = verify_database(trail)
    assert {"untrusted_key", "no_start_seal", "witness_mismatch"} <= {f.kind for f in report.findings}
    assert all(f.chain == chain for f in report.findings)
    assert any("seq 10" in f.detail for f in findings(report, "witness_mismatch"))
    done = cli_verify(trail)
    assert done.returncode == 1 and "untrusted_key" in done.stdout and chain in done.stdout
    listed = cli("audit", "trust", "list", env={"LGSP_DATABASE_URL": trail.url.render_as_string(hide_password=False)})
    assert listed.returncode == 1 and kid in listed.stdout and "NO" in listed.stdout


def test_a_slipped_in_active_key_is_never_used_to_sign(trail):
    write_chain(trail, 3)
    evil = Ed25519PrivateKey.generate()
    with trail.begin() as conn:  # a valid-looking encrypted private half copied from the real key
        real = conn.execute(select(audit_keys.c.private_key)).scalar()
        conn.execute(insert(audit_keys).values(kid="seal-29990101-evil0002", public_key=seals.public_hex(evil),
                                               private_key=real, status="active",
                                               created_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)))
    chain = write_chain(trail, 3)
    assert {s["kid"] for s in seals_of(trail, chain)} != {"seal-29990101-evil0002"}
    report = verify_database(trail)
    assert report.ok, report.findings


@pytest.mark.parametrize("which", ["chain", "all"])
def test_deleted_seals_and_rewritten_record_is_caught(trail, which):
    """Forgery (b): delete a chain's seals (or all seals), rewrite a record, recompute the hashes."""
    chain, other = write_chain(trail), write_chain(trail, 12)
    with trail.begin() as conn:
        conn.execute(delete(audit_seals).where(audit_seals.c.chain == chain) if which == "chain"
                     else delete(audit_seals))
    rewrite_and_rehash(trail, chain, 7, officer="someone-else")
    report = verify_database(trail)
    for kind in ("no_start_seal", "seal_deleted", "witness_mismatch"):
        assert any(f.chain == chain for f in findings(report, kind)), (kind, report.findings)
    assert {f.chain for f in findings(report, "no_start_seal")} == ({chain} if which == "chain" else {chain, other})
    done = cli_verify(trail)
    assert done.returncode == 1 and "no_start_seal" in done.stdout and "witness_mismatch" in done.stdout


def test_deleted_chain_is_caught(trail):
    """Forgery (c): delete a whole chain, records and seals."""
    kept, gone = write_chain(trail, 12), write_chain(trail, 25)
    with trail.begin() as conn:
        conn.execute(delete(audit_records).where(audit_records.c.chain == gone))
        conn.execute(delete(audit_seals).where(audit_seals.c.chain == gone))
    report = verify_database(trail)
    missing = findings(report, "chain_missing")
    assert [f.chain for f in missing] == [gone] and "seq 25" in missing[0].detail
    assert not [f for f in report.findings if f.chain == kept]
    done = cli_verify(trail)
    assert done.returncode == 1 and f"chain_missing  chain {gone}" in done.stdout


def test_deleted_tail_with_its_seals_is_caught(trail):
    """Forgery (d): delete the last records of a chain and the seals that cover them."""
    chain = write_chain(trail, 30)
    with trail.begin() as conn:
        conn.execute(delete(audit_records).where(audit_records.c.chain == chain, audit_records.c.seq > 15))
        conn.execute(delete(audit_seals).where(audit_seals.c.chain == chain, audit_seals.c.seq > 15))
    report = verify_database(trail)
    tail = findings(report, "tail_deleted")
    assert len(tail) == 1 and tail[0].chain == chain and "records 16–30 are gone" in tail[0].detail
    done = cli_verify(trail)
    assert done.returncode == 1 and "tail_deleted" in done.stdout


def test_forged_export_is_caught_with_the_operators_trust(trail, tmp_path):
    """An export carries keys; an attacker swaps in their own, rewrites a record, re-signs the seals."""
    write_chain(trail, 25)
    url = trail.url.render_as_string(hide_password=False)
    exported, trust = tmp_path / "export.jsonl", tmp_path / "auditor-trust.jsonl"
    with open(exported, "wb") as out:
        export_jsonl(trail, None, None, out)
    made = cli("audit", "trust", "export", "-o", str(trust), env={"LGSP_DATABASE_URL": url})
    assert made.returncode == 0 and "SHA256:" in made.stdout
    # The auditor has the export and the trust file, not the master secret nor the gateway's home.
    auditor = {"LGSP_SECRET_KEY": "", "LGSP_HOME": str(tmp_path / "auditor"), "LGSP_AUDIT_TRUST": "",
               "LGSP_DATABASE_URL": "sqlite:///" + str(tmp_path / "none.db")}
    assert cli("audit", "verify", "--file", str(exported), "--trust", str(trust), env=auditor).returncode == 0

    evil = seals.Signer("seal-20260101-evil0003", Ed25519PrivateKey.generate())
    items = [orjson.loads(line) for line in exported.read_bytes().splitlines()]
    records = [i for i in items if i["type"] == "record"]
    prev = records[10]["prev_hash"]
    for item in records[10:]:
        item["officer"] = "someone-else" if item["seq"] == 11 else item["officer"]
        item["prev_hash"] = prev
        item["hash"] = prev = record_hash({**item, "at": dt.datetime.fromisoformat(item["at"].replace("Z", "+00:00"))})
    by_seq = {r["seq"]: r["hash"] for r in records}
    for item in items:
        if item["type"] == "seal":
            forged = evil.seal(item["chain"], item["seq"], by_seq[item["seq"]], item["reason"])
            item.update(head_hash=forged["head_hash"], kid=evil.kid, signature=forged["signature"],
                        at=forged["at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    items = [i for i in items if i["type"] != "key"] + [{"type": "key", "kid": evil.kid, "status": "active",
                                                          "public_key": seals.public_hex(evil.key)}]
    exported.write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in items))

    report = verify_file(exported, trust)
    assert findings(report, "untrusted_key") and not findings(report, "forged_seal")
    done = cli("audit", "verify", "--file", str(exported), "--trust", str(trust), env=auditor)
    assert done.returncode == 1 and "untrusted_key" in done.stdout
    # Without a trust of their own, the auditor is told so: the file's keys are never used.
    refused = cli("audit", "verify", "--file", str(exported), env=auditor)
    assert refused.returncode == 2 and "--trust" in refused.stderr


def test_export_stripped_of_seals_is_caught_by_the_witness(trail, tmp_path):
    write_chain(trail, 25)
    exported = tmp_path / "export.jsonl"
    with open(exported, "wb") as out:
        export_jsonl(trail, None, None, out)
    items = [orjson.loads(line) for line in exported.read_bytes().splitlines()]
    items = [i for i in items if i["type"] != "seal"]
    prev = "0" * 64
    for item in (i for i in items if i["type"] == "record"):
        item["purpose"] = "curiosity" if item["seq"] == 3 else item["purpose"]
        item["prev_hash"] = prev
        item["hash"] = prev = record_hash({**item, "at": dt.datetime.fromisoformat(item["at"].replace("Z", "+00:00"))})
    exported.write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in items))
    assert verify_file(exported).ok  # nothing in the file itself gives it away …
    report = verify_file(exported, witness_dir=tmp_path / "witness")  # … the witness does
    assert [f.detail.split(" is ")[0] for f in findings(report, "witness_mismatch")] == [
        "the record at seq 10", "the record at seq 20", "the record at seq 25"]
    done = cli("audit", "verify", "--file", str(exported), "--witness", str(tmp_path / "witness"))
    assert done.returncode == 1 and "witness_mismatch" in done.stdout


def test_tampered_witness_line_is_a_finding(trail, tmp_path):
    chain = write_chain(trail, 12)
    path = next((tmp_path / "witness").glob("heads-*.jsonl"))
    lines = path.read_bytes().splitlines()
    item = orjson.loads(lines[1])
    item["head_hash"] = "f" * 64
    path.write_bytes(b"\n".join([lines[0], orjson.dumps(item), *lines[2:]]) + b"\n")
    report = verify_database(trail)
    assert [(f.kind, f.chain) for f in report.findings] == [("witness_invalid", chain)]


def test_keys_made_before_derivation_are_trusted_on_first_use_then_rotated(trail, tmp_path):
    legacy = Ed25519PrivateKey.generate()
    raw = legacy.private_bytes_raw()
    with trail.begin() as conn:
        conn.execute(insert(audit_keys).values(kid="seal-20250101-0legacy0", public_key=seals.public_hex(legacy),
                                               private_key=fernet().encrypt(raw).decode(), status="active",
                                               created_at=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)))
    old = seals.Signer("seal-20250101-0legacy0", legacy).seal("old-chain", 0, "0" * 64, "start")
    with trail.begin() as conn:
        conn.execute(insert(audit_seals).values(**old))
    made = seals.ensure_key(trail)
    assert made and made != "seal-20250101-0legacy0"
    trusted = audit_trust.read_trust(Path(os.environ["LGSP_AUDIT_TRUST"]))
    assert set(trusted) == {"seal-20250101-0legacy0", made}
    assert seals.signer(trail).kid == made
    assert seals.verify(old, audit_trust.trusted_keys(trail)) is None


def _append_many(directory: str, n: int, tag: int) -> None:
    w = witness.Witness(Path(directory), "db-test")
    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for i in range(n):
        w.append([{"chain": f"chain-{tag}", "seq": i, "head_hash": "a" * 64, "at": at, "kid": "k",
                   "reason": "interval", "signature": "b" * 128}])


def test_witness_appends_from_several_processes_interleave_whole_lines(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), 200, tag)) for tag in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    entries = list(witness.read(tmp_path, "db-test"))
    assert all(e.problem is None for e in entries) and len(entries) == 800
    for tag in range(4):
        assert [e.seal["seq"] for e in entries if e.seal["chain"] == f"chain-{tag}"] == list(range(200))


def test_deleted_chain_hidden_behind_a_made_up_base_is_caught(trail):
    chain = write_chain(trail, 25)
    with trail.begin() as conn:  # as if retention had removed everything: no records, no seals, a base at seq 25
        conn.execute(delete(audit_records).where(audit_records.c.chain == chain))
        conn.execute(delete(audit_seals).where(audit_seals.c.chain == chain))
        conn.execute(insert(audit_chain_bases).values(chain=chain, base_seq=25, base_hash="e" * 64,
                                                      at=dt.datetime.now(dt.timezone.utc)))
    report = verify_database(trail)
    assert {"no_start_seal", "tail_deleted", "seal_deleted"} <= {f.kind for f in report.findings}
    assert {f.chain for f in report.findings} == {chain}


def test_a_fresh_home_makes_its_trust_file_and_witness(fresh_db_url, tmp_path):
    home = tmp_path / "home"
    env = {"LGSP_HOME": str(home), "LGSP_DATABASE_URL": fresh_db_url, "LGSP_AUDIT_TRUST": "", "LGSP_AUDIT_WITNESS": ""}
    done = cli("db", "upgrade", env=env)
    assert done.returncode == 0 and "new seal key seal-" in done.stdout and "SHA256:" in done.stdout, done.stderr
    trust = home / "audit-trust.jsonl"
    assert oct(trust.stat().st_mode & 0o777) == "0o600"
    [kid] = audit_trust.read_trust(trust)
    assert kid in done.stdout
    witnessed = list((home / "audit-witness").glob("heads-*.jsonl"))  # the upgrade's own admin records were sealed
    assert witnessed and oct((home / "audit-witness").stat().st_mode & 0o777) == "0o700"
    assert {orjson.loads(line)["kid"] for line in witnessed[0].read_bytes().splitlines()} == {kid}
    rotated = cli("audit", "rotate-key", env=env)
    assert rotated.returncode == 0 and "SHA256:" in rotated.stdout
    assert len(audit_trust.read_trust(trust)) == 2
    listed = cli("audit", "trust", "list", env=env)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 3 and " NO " not in listed.stdout
    assert cli("audit", "verify", env=env).returncode == 0


def test_a_changed_key_row_cannot_discredit_genuine_seals(trail, tmp_path, monkeypatch):
    chain = write_chain(trail, 12)
    monkeypatch.setenv("LGSP_AUDIT_TRUST", str(tmp_path / "not-here.jsonl"))  # trust by derivation only
    with trail.begin() as conn:
        conn.execute(update(audit_keys).values(public_key=seals.public_hex(Ed25519PrivateKey.generate())))
    report = verify_database(trail)
    assert report.ok, report.findings
    assert {s["kid"] for s in seals_of(trail, chain)} <= audit_trust.trusted_keys(trail).untrusted


def test_a_compacted_witness_still_catches_a_deleted_tail_and_a_rewrite(trail, tmp_path):
    kept, cut = write_chain(trail, 30), write_chain(trail, 30)
    directory = tmp_path / "witness"
    [today] = list(directory.glob("heads-*.jsonl"))
    old = directory / "heads-2020-01-01.jsonl"  # as if sealed years ago
    today.rename(old)
    refused = cli("audit", "witness", "compact", "--before", dt.date.today().isoformat(), "--dir", str(directory))
    assert refused.returncode == 2
    done = cli("audit", "witness", "compact", "--before", "2020-01-02", "--dir", str(directory))
    assert done.returncode == 0 and "into 4" in done.stdout, done.stdout + done.stderr
    assert [p.name for p in directory.iterdir()] == ["heads-2020-01-01-compacted.jsonl"]
    assert verify_database(trail).ok
    with trail.begin() as conn:
        conn.execute(delete(audit_records).where(audit_records.c.chain == cut, audit_records.c.seq > 15))
        conn.execute(delete(audit_seals).where(audit_seals.c.chain == cut, audit_seals.c.seq > 15))
        conn.execute(delete(audit_seals).where(audit_seals.c.chain == kept, audit_seals.c.seq > 0))
    rewrite_and_rehash(trail, kept, 3, purpose="curiosity")
    report = verify_database(trail)
    assert [f.chain for f in findings(report, "tail_deleted")] == [cut]
    assert [f.chain for f in findings(report, "witness_mismatch")] == [kept]
