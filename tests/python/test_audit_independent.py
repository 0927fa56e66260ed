"""The independent verifier (audit_verify.py) checked against the audit log v1 vectors of another
implementation, then run over a golden dump of a log the worker wrote on Tansu
(tests/fixtures/audit/worker-run.json, made by tests/audit_log.rs with BYOK_WRITE_GOLDEN=1):
every record under its signer, every output a leaf, roots and chain links recomputed, the same
verdict as `byok verify`; and a changed byte is found."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import audit_verify as av  # noqa: E402

from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures")
VECTORS = json.load(open(os.path.join(ROOT, "vectors", "audit-v1.json")))
GOLDEN = os.path.join(ROOT, "audit", "worker-run.json")


def opt(x):
    return None if x is None else av.b64d(x)


def test_leaf_hashes_match_the_vectors():
    for v in VECTORS["leaves"]:
        headers = [(h[0], opt(h[1])) for h in v["headers"]]
        # the vectors give src as an input of its own (some have no byok.src header)
        got = av.leaf_hash(v["topic"], v["partition"], v["offset"], opt(v["key_b64"]),
                           opt(v["value_b64"]), headers, v["src"].encode())
        assert got.hex() == v["leaf_hash_hex"]


def test_roots_and_links_match_the_vectors():
    hashes = [bytes.fromhex(v["leaf_hash_hex"]) for v in VECTORS["leaves"]]
    for r in VECTORS["roots"]:
        assert av.mth(hashes[: r["leaves"]]).hex() == r["root_hex"]
    for c in VECTORS["chain"]:
        link = av.chain_link(bytes.fromhex(c["prev_hex"]), c["topic"], c["partition"], c["from"],
                             c["to"], c["n"], bytes.fromhex(c["root_hex"]))
        assert link.hex() == c["link_hex"]


def test_signatures_of_the_vectors():
    c = VECTORS["checkpoint"]
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(c["session_seed_hex"]))
    sig = key.sign(c["unsigned"].encode())
    assert c["unsigned"][:-1] + ',"sig":"' + av.b64e(sig) + '"}' == c["value"]
    signed, sig = av.split_signed(c["value"].encode())
    av.verify_ed25519(av.b64d(c["session_public_b64"]), signed.encode(), sig)
    s = VECTORS["signer"]
    signed, sig = av.split_signed(s["value"].encode(), "kv_sig")
    av.verify_ps256(av.b64d(s["operator_n_b64"]), av.b64d(s["operator_e_b64"]), signed.encode(), sig)
    for r in VECTORS["reject"]:
        with pytest.raises((ValueError, InvalidSignature)):
            signed, sig = av.split_signed(r["value"].encode())
            av.verify_ed25519(av.b64d(c["session_public_b64"]), signed.encode(), sig)


def test_the_log_a_worker_wrote_verifies_independently():
    v = av.verify_dump(GOLDEN)
    assert v.findings == []
    d = json.load(open(GOLDEN))
    assert v.passed == len(d["records"]) > 0
    assert len(v.checkpoints) >= 2
    assert len(v.sessions) == d["expect"]["writers"]
    # the same verdict as byok verify gave on the run
    assert "%d passed, 0 failed" % v.passed == d["expect"]["verdict"]


def test_a_changed_byte_in_the_golden_log_is_found(tmp_path):
    d = json.load(open(GOLDEN))
    archive = [r for r in d["records"] if r["topic"] == "archive.messages"]
    value = bytearray(av.b64d(archive[0]["value"]))
    value[-1] ^= 1
    archive[0]["value"] = av.b64e(bytes(value))
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(d))
    v = av.verify_dump(str(path))
    assert [f.split(":")[0] for f in v.findings] == ["altered"]
