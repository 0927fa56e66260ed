"""An independent verifier of audit log v1 (docs/audit-v1.md), written from the page alone with
Python's standard library and the `cryptography` package: leaf hashes, RFC 6962 Merkle roots,
per-partition chain links, Ed25519 session signatures, PS256 signer statements, writer chains,
signed registry and key records.

It reads a dump of the topics a worker wrote (JSON, see `load`), not Kafka, so it shares no code
with the Rust implementation: `tests/audit_log.rs` dumps a run and runs it, and
`test_audit_independent.py` runs it over a committed golden dump.

    python3 audit_verify.py DUMP.json      # prints "N passed, M failed", exit 1 on findings
"""

import base64
import hashlib
import json
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ZERO = bytes(32)


def sha256(b):
    return hashlib.sha256(b).digest()


def b64d(text):
    """Canonical base64url without padding (unused bits zero), or ValueError."""
    if "=" in text or any(c in text for c in "+/"):
        raise ValueError("not base64url without padding")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != text:
        raise ValueError("not canonical")
    return raw


def b64e(raw):
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def no_repeated_members(pairs):
    names = [k for k, _ in pairs]
    if len(names) != len(set(names)):
        raise ValueError("a member name is repeated")
    return dict(pairs)


def parse(text):
    return json.loads(text, object_pairs_hook=no_repeated_members)


def split_signed(value, member="sig"):
    """S and the signature bytes of a signed value (§0), or ValueError."""
    text = value.decode("utf-8")
    marker = ',"%s":"' % member
    if not text.endswith('"}'):
        raise ValueError("does not end with a string member")
    at = text.rfind(marker)
    if at < 0:
        raise ValueError("no %s member" % member)
    sig_text = text[at + len(marker):-2]
    if '"' in sig_text or "\\" in sig_text:
        raise ValueError("%s is not last" % member)
    signed = text[:at] + "}"
    parse(text)  # the whole value is JSON without repeated members
    return signed, b64d(sig_text)


def h_opt(x):
    return b"\x00" if x is None else b"\x01" + sha256(x)


def headers_hash(headers):
    out = struct.pack(">H", len(headers))
    for name, value in headers:
        n = name.encode()
        out += struct.pack(">H", len(n)) + n
        out += b"\xff\xff\xff\xff" if value is None else struct.pack(">I", len(value)) + value
    return sha256(out)


def leaf_hash(topic, partition, offset, key, value, headers, src=None):
    """A record's leaf hash; `src` is its byok.src header's value (empty when absent) unless
    given (the vectors give it as an input of its own)."""
    if src is None:
        src = b""
        for name, v in headers:
            if name == "byok.src" and v is not None:
                src = v
    t = topic.encode()
    data = struct.pack(">H", len(t)) + t + struct.pack(">I", partition) + struct.pack(">Q", offset)
    data += struct.pack(">H", len(src)) + src
    data += h_opt(key) + h_opt(value) + headers_hash(headers)
    return sha256(b"\x00" + data)


def mth(leaves):
    if not leaves:
        return sha256(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def chain_link(prev, topic, partition, start, to, n, root):
    t = topic.encode()
    return sha256(
        b"byok-chain-v1" + prev + struct.pack(">H", len(t)) + t + struct.pack(">I", partition)
        + struct.pack(">QQQ", start, to, n) + root
    )


def verify_ps256(n, e, message, sig):
    key = rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
    key.verify(sig, message, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
               hashes.SHA256())


def verify_ed25519(public, message, sig):
    Ed25519PublicKey.from_public_bytes(public).verify(sig, message)


class Verifier:
    def __init__(self, n, e, cluster):
        self.n, self.e, self.cluster = n, e, cluster
        self.sessions = {}  # writer -> list of (key, not_before, not_after)
        self.chain = {}  # writer -> (next seq, wprev, ended)
        self.checkpoints = []
        self.findings = []
        self.passed = 0

    def finding(self, kind, where):
        self.findings.append("%s: %s" % (kind, where))

    def audit_record(self, key, value, where):
        if key.startswith("dek:") or key.startswith("kek:"):
            return
        try:
            j = parse(value.decode())
            if j.get("writer") != key:
                raise ValueError("the record key is not its writer")
            if j["t"] == "signer":
                signed, sig = split_signed(value, "kv_sig")
                verify_ps256(self.n, self.e, signed.encode(), sig)
                st = parse(signed)
                if st["cluster"] != self.cluster:
                    raise ValueError("another cluster")
                state = self.chain.get(key)
                expect = (0, ZERO) if state is None else state[:2]
                if (st["seq"], b64d(st["wprev"])) != expect:
                    return self.finding("writer-chain break", where)
                self.sessions.setdefault(key, []).append(
                    (b64d(st["session_key"]), st["not_before"], st["not_after"]))
                self.chain[key] = (st["seq"] + 1, sha256(value), False)
                return
            seq, wprev, ended = self.chain[key]
            if ended:
                return self.finding("record after end", where)
            signed, sig = split_signed(value)
            public = self.sessions[key][-1][0]
            verify_ed25519(public, signed.encode(), sig)
            s = parse(signed)
            if (s["seq"], b64d(s["wprev"])) != (seq, wprev):
                return self.finding("writer-chain break", where)
            self.chain[key] = (seq + 1, sha256(value), s["t"] == "end")
            if s["t"] == "checkpoint":
                self.checkpoints.append(s)
        except (ValueError, KeyError, InvalidSignature, UnicodeDecodeError) as e:
            self.finding("bad signature", "%s (%s)" % (where, e))

    def signed_registry_record(self, rec, kind, id_member):
        """A registry or key record signed by a writer's session (§5b)."""
        signed, sig = split_signed(rec["value"])
        s = parse(signed)
        if s.get("t") != kind or s.get(id_member) != rec["key"].decode():
            raise ValueError("not a %s record of its key" % kind)
        b64d(s["prev"])
        verify_ed25519(self.sessions[s["writer"]][-1][0], signed.encode(), sig)

    def coverage(self, records):
        named = {}
        for i, c in enumerate(self.checkpoints):
            for o in c["out"]:
                for first, count in o["runs"]:
                    for off in range(first, first + count):
                        at = (o["topic"], o["partition"], off)
                        if at in named:
                            self.finding("rewind", "%s/%d/%d named twice" % at)
                        named[at] = i
        leaves = {}
        for r in records:
            at = (r["topic"], r["partition"], r["offset"])
            where = "%s/%d/%d" % at
            if r["topic"] in ("byok.deks", "byok.keks"):
                try:
                    kind, member = ("dek", "dek") if r["topic"] == "byok.deks" else ("kek", "tenant")
                    self.signed_registry_record(r, kind, member)
                except (ValueError, KeyError, InvalidSignature) as e:
                    self.finding("forged", "%s (%s)" % (where, e))
            i = named.pop(at, None)
            if i is None:
                self.finding("injected", where)
                continue
            h = leaf_hash(r["topic"], r["partition"], r["offset"], r["key"], r["value"], r["headers"])
            leaves.setdefault(i, []).append((at, h))
        for at in sorted(named):
            self.finding("removed", "%s/%d/%d" % at)
        for i, c in enumerate(self.checkpoints):
            got = sorted(leaves.get(i, []))
            if len(got) != c["leaves"]:
                continue
            if b64e(mth([h for _, h in got])) == c["root"]:
                self.passed += len(got)
            else:
                self.finding("altered", "checkpoint %s seq %d" % (c["writer"], c["seq"]))

    def chains(self):
        heads = {}
        for c in self.checkpoints:
            root = b64d(c["root"])
            for r in c["ranges"]:
                k = (r["topic"], r["partition"])
                prev = b64d(r["prev"])
                where = "%s/%d [%d, %d)" % (k + (r["from"], r["to"]))
                if k in heads:
                    to, link = heads[k]
                    if r["from"] > to:
                        self.finding("range gap", where)
                    elif r["from"] < to:
                        self.finding("rewind", where)
                    elif "restart" not in r and prev != link:
                        self.finding("chain break", where)
                link = chain_link(prev, r["topic"], r["partition"], r["from"], r["to"], r["n"], root)
                if b64e(link) != r["link"]:
                    self.finding("chain break", where + ": link does not recompute")
                heads[k] = (r["to"], link)


def load(path):
    """The dump: {"cluster", "signing_key": {"n", "e"}, "audit": [{"key", "value"}],
    "records": [{"topic", "partition", "offset", "key", "value", "headers": [[name, value]]}]},
    bytes as base64url (null for null)."""
    d = json.load(open(path))
    opt = lambda x: None if x is None else b64d(x)
    audit = [(a["key"], b64d(a["value"])) for a in d["audit"]]
    records = [
        {
            "topic": r["topic"], "partition": r["partition"], "offset": r["offset"],
            "key": opt(r["key"]), "value": opt(r["value"]),
            "headers": [(h[0], opt(h[1])) for h in r["headers"]],
        }
        for r in d["records"]
    ]
    return d, audit, records


def verify_dump(path):
    d, audit, records = load(path)
    v = Verifier(b64d(d["signing_key"]["n"]), b64d(d["signing_key"]["e"]), d["cluster"])
    for i, (key, value) in enumerate(audit):
        v.audit_record(key, value, "audit record %d" % i)
    v.coverage(records)
    v.chains()
    return v


def main(argv):
    v = verify_dump(argv[1])
    for f in v.findings[:20]:
        print(f)
    print("%d writer(s), %d checkpoint(s)" % (len(v.sessions), len(v.checkpoints)))
    print("%d passed, %d failed" % (v.passed, len(v.findings)))
    return 1 if v.findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
