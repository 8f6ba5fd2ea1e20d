"""A message's payload at rest: encrypted (AES-GCM), and payloads sealed before (Fernet) still open."""
from __future__ import annotations

import base64

import orjson
import pytest
from cryptography.exceptions import InvalidTag

from lgsp.delivery import store


def test_payload_sealed_and_opened():
    params = {"dossier_no": "HS-1", "applicant": {"name": "Nguyễn Văn An", "id": "001085012345"}}
    sealed = store.seal_payload(params)
    assert sealed.startswith(store.SEALED) and "Nguy" not in sealed and "001085012345" not in sealed
    assert store.open_payload(sealed) == params
    assert store.seal_payload(params) != sealed  # a fresh nonce each time


def test_payload_sealed_by_fernet_before_still_opens():
    params = {"dossier_no": "HS-2", "status": "received"}
    assert store.open_payload(store._cipher().encrypt(orjson.dumps(params)).decode()) == params


def test_tampered_payload_refused():
    sealed = store.seal_payload({"dossier_no": "HS-3"})
    body = bytearray(base64.urlsafe_b64decode(sealed[len(store.SEALED):]))
    body[-1] ^= 1
    with pytest.raises(InvalidTag):
        store.open_payload(store.SEALED + base64.urlsafe_b64encode(bytes(body)).decode())
