"""Starts `byok vault-emulator` with the example seed for the Python SDK tests.

The vault host names of the seed resolve to 127.0.0.1 here (as a hosts file would); nothing
else about the SDKs is changed. The binary comes from BYOK_BIN (scripts/test sets it), else
target/debug/byok.
"""
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "config" / "emulator.example.toml"

_real_getaddrinfo = socket.getaddrinfo


def _resolve_vaults(host, *args, **kwargs):
    if isinstance(host, str) and (host.endswith(".vault.azure.net") or host.endswith(".vaultcore.azure.net")):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _resolve_vaults


class Emulator:
    binary = None

    def __init__(self, port, ca):
        self.port = port
        self.ca = str(ca)
        self.authority = f"https://127.0.0.1:{port}"

    def vault_url(self, vault):
        return f"https://{vault}.vault.azure.net:{self.port}"

    def admin(self, method, path, **kwargs):
        r = requests.request(method, f"{self.authority}/_admin/{path}", verify=self.ca, timeout=10, **kwargs)
        r.raise_for_status()
        return r.json()


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    binary = os.environ.get("BYOK_BIN") or str(ROOT / "target" / "debug" / "byok")
    ca = tmp_path_factory.mktemp("emu") / "ca.pem"
    proc = subprocess.Popen(
        [binary, "vault-emulator", "--seed", str(SEED), "--listen", "127.0.0.1:0", "--ca-out", str(ca)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    port = None
    started = time.monotonic()
    for line in proc.stdout:
        m = re.search(r"ready in (\d+) ms on https://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(2))
            print(f"emulator ready in {m.group(1)} ms (process up after {time.monotonic() - started:.2f} s)")
            break
    if port is None:
        proc.kill()
        raise RuntimeError("the emulator did not start")
    Emulator.binary = binary
    yield Emulator(port, ca)
    proc.terminate()
    proc.wait(timeout=10)
