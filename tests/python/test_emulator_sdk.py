"""Microsoft's Python SDKs (azure-identity, azure-keyvault-keys) against `byok vault-emulator`,
given only the CA file, the seed's tenant, client id and secret or certificate, the authority
host and the vault URL."""
import subprocess
import time

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import CertificateCredential, ClientSecretCredential
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm

from conftest import ROOT

ACME_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ACME_APP = "4a1e6a3e-9d2f-4f7c-8a55-0c6e2d1b9f33"
ACME_SECRET = "acme-example-secret-not-real"
ACME_ADMIN_APP = "a0a0a0a0-1111-4222-8333-444455556666"
ACME_ADMIN_SECRET = "acme-admin-secret-not-real"
ACME_CERT = str(ROOT / "config" / "example" / "acme.pem")
BYOK_VERSION = "78deebed173b48e48f55abf87ed4cf71"


def secret_credential(emu, app=ACME_APP, secret=ACME_SECRET):
    return ClientSecretCredential(
        ACME_TENANT, app, secret, authority=emu.authority, disable_instance_discovery=True, connection_verify=emu.ca
    )


def certificate_credential(emu):
    return CertificateCredential(
        ACME_TENANT, ACME_APP, certificate_path=ACME_CERT, authority=emu.authority,
        disable_instance_discovery=True, connection_verify=emu.ca,
    )


def key_client(emu, credential):
    return KeyClient(emu.vault_url("acme-vault"), credential, connection_verify=emu.ca)


@pytest.mark.parametrize("kind", ["secret", "certificate"])
def test_both_credentials_encrypt_and_decrypt_with_the_seed_key(emulator, kind):
    cred = secret_credential(emulator) if kind == "secret" else certificate_credential(emulator)
    key = key_client(emulator, cred).get_key("byok-key")
    assert key.id == f"{emulator.vault_url('acme-vault')}/keys/byok-key/{BYOK_VERSION}"
    assert key.key_type == "RSA"
    assert len(key.key.n) == 512
    crypto = CryptographyClient(key, cred, connection_verify=emulator.ca)
    result = crypto.encrypt(EncryptionAlgorithm.rsa_oaep_256, b"a 32-byte data encryption key!!!")
    assert len(result.ciphertext) == 512
    assert result.key_id == key.id
    assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, result.ciphertext).plaintext == b"a 32-byte data encryption key!!!"


def test_create_get_list(emulator):
    admin = key_client(emulator, secret_credential(emulator, ACME_ADMIN_APP, ACME_ADMIN_SECRET))
    created = admin.create_rsa_key("py-created", size=3072)
    assert created.key_type == "RSA" and len(created.key.n) == 384
    assert admin.get_key("py-created").id == created.id
    names = {p.name for p in admin.list_properties_of_keys()}
    assert {"byok-key", "py-created"} <= names
    versions = list(admin.list_properties_of_key_versions("py-created"))
    assert [v.version for v in versions] == [created.properties.version]


def test_disabled_key_refuses_decrypt(emulator):
    cred = secret_credential(emulator)
    crypto = CryptographyClient(f"{emulator.vault_url('acme-vault')}/keys/byok-key/{BYOK_VERSION}", cred, connection_verify=emulator.ca)
    ct = crypto.encrypt(EncryptionAlgorithm.rsa_oaep_256, b"dek").ciphertext
    emulator.admin("POST", "vaults/acme-vault/keys/byok-key/disable")
    try:
        with pytest.raises(HttpResponseError) as err:
            crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, ct)
        assert err.value.status_code == 403
        assert "disabled" in str(err.value)
        body = err.value.response.json()
        assert body["error"]["innererror"]["code"] == "KeyDisabled"
        assert key_client(emulator, cred).get_key("byok-key").properties.enabled is False
    finally:
        emulator.admin("POST", "vaults/acme-vault/keys/byok-key/enable")
    assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, ct).plaintext == b"dek"


def test_delete_and_recover(emulator):
    admin = key_client(emulator, secret_credential(emulator, ACME_ADMIN_APP, ACME_ADMIN_SECRET))
    admin.create_rsa_key("py-deleted", size=2048)
    deleted = admin.begin_delete_key("py-deleted").result()
    assert deleted.recovery_id.endswith("/deletedkeys/py-deleted")
    assert deleted.scheduled_purge_date > deleted.deleted_date
    with pytest.raises(ResourceNotFoundError):
        admin.get_key("py-deleted")
    assert admin.get_deleted_key("py-deleted").name == "py-deleted"
    recovered = admin.begin_recover_deleted_key("py-deleted").result()
    assert recovered.name == "py-deleted"
    assert admin.get_key("py-deleted").properties.enabled is True


def test_throttled_requests_are_retried_by_the_sdk(emulator):
    cred = secret_credential(emulator)
    crypto = CryptographyClient(f"{emulator.vault_url('acme-vault')}/keys/byok-key/{BYOK_VERSION}", cred, connection_verify=emulator.ca)
    # encrypt may run locally with the public key; decrypt always goes to the vault
    ct = crypto.encrypt(EncryptionAlgorithm.rsa_oaep_256, b"dek").ciphertext
    crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, ct)  # token and challenge done
    emulator.admin("POST", "vaults/acme-vault/settings", json={"budget_per_10s": 16})
    try:
        started = time.monotonic()
        for _ in range(4):  # two fit the budget (8 units each); the rest wait for Retry-After
            assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, ct).plaintext == b"dek"
        assert time.monotonic() - started >= 1.0, "the SDK waited for Retry-After"
    finally:
        emulator.admin("POST", "vaults/acme-vault/settings", json={"budget_per_10s": 4000})


def test_certificate_credential_accepts_a_certificate_made_by_byok_cert_generate(emulator, tmp_path):
    out = subprocess.run(
        [emulator.binary, "cert", "generate", "--tenant", "acme", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout
    sha1 = next(l.split()[2] for l in out.splitlines() if l.strip().startswith("thumbprint   SHA-1"))
    credential = str(tmp_path / "acme-credential.pem")
    cred = CertificateCredential(
        ACME_TENANT, ACME_APP, certificate_path=credential, authority=emulator.authority,
        disable_instance_discovery=True, connection_verify=emulator.ca,
    )
    with pytest.raises(Exception) as refused:
        cred.get_token("https://vault.azure.net/.default")
    assert "AADSTS700027" in str(refused.value)
    uploaded = emulator.admin("POST", f"tenants/{ACME_TENANT}/apps/{ACME_APP}/certificates",
                              data=(tmp_path / "acme.cer").read_bytes())
    assert uploaded["sha1"] == sha1
    try:
        cred = CertificateCredential(
            ACME_TENANT, ACME_APP, certificate_path=credential, authority=emulator.authority,
            disable_instance_discovery=True, connection_verify=emulator.ca,
        )
        assert key_client(emulator, cred).get_key("byok-key").properties.version == BYOK_VERSION
    finally:
        emulator.admin("DELETE", f"tenants/{ACME_TENANT}/apps/{ACME_APP}/certificates/{sha1}")


OPERATOR_TENANT = "9b2d3c1a-55e0-4c69-a1f7-3f1e0c2b8d40"
OPERATOR_APP = "0f6f0b6e-2f0a-4d8e-9b8e-6a3c5d7e9f10"
OPERATOR_SECRET = "example-operator-secret-not-real"


def test_sign_and_verify_ps256_with_the_operators_audit_signing_key(emulator):
    """AUDIT.md §5: the operator's signing key signs the SHA-256 of a signer statement (PS256,
    salt 32); only an app with keys/sign/action on that key may."""
    import hashlib
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
    from azure.keyvault.keys.crypto import SignatureAlgorithm

    cred = ClientSecretCredential(
        OPERATOR_TENANT, OPERATOR_APP, OPERATOR_SECRET, authority=emulator.authority,
        disable_instance_discovery=True, connection_verify=emulator.ca,
    )
    key = KeyClient(emulator.vault_url("byok-operator"), cred, connection_verify=emulator.ca).get_key("audit-signing")
    assert len(key.key.n) == 384 and sorted(key.key_operations) == ["sign", "verify"]
    digest = hashlib.sha256(b'{"v":1,"t":"signer"}').digest()
    crypto = CryptographyClient(key.id, cred, connection_verify=emulator.ca)
    signed = crypto.sign(SignatureAlgorithm.ps256, digest)
    assert signed.key_id == key.id and len(signed.signature) == 384
    assert crypto.verify(SignatureAlgorithm.ps256, digest, signed.signature).is_valid
    assert not crypto.verify(SignatureAlgorithm.ps256, hashlib.sha256(b"other").digest(), signed.signature).is_valid
    # an independent PSS check (salt length 32) with the public key Key Vault returned
    public = rsa.RSAPublicNumbers(int.from_bytes(key.key.e, "big"), int.from_bytes(key.key.n, "big")).public_key()
    public.verify(signed.signature, digest, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                  utils.Prehashed(hashes.SHA256()))
    # a digest of the wrong length is refused
    with pytest.raises(HttpResponseError) as e:
        crypto.sign(SignatureAlgorithm.ps256, digest[:20])
    assert e.value.status_code == 400
    # the operator's quarantine key is not for signing: its role grants no keys/sign/action
    quarantine = CryptographyClient(f"{emulator.vault_url('byok-operator')}/keys/quarantine-kek", cred, connection_verify=emulator.ca)
    with pytest.raises(HttpResponseError) as e:
        quarantine.sign(SignatureAlgorithm.ps256, digest)
    assert e.value.status_code == 403


def test_a_tenant_app_without_the_sign_action_cannot_sign(emulator):
    from azure.keyvault.keys.crypto import SignatureAlgorithm

    crypto = CryptographyClient(
        f"{emulator.vault_url('acme-vault')}/keys/byok-key/{BYOK_VERSION}", secret_credential(emulator),
        connection_verify=emulator.ca,
    )
    with pytest.raises(HttpResponseError) as e:
        crypto.sign(SignatureAlgorithm.ps256, b"\x01" * 32)
    assert e.value.status_code == 403
    assert "sign" in str(e.value).lower()
