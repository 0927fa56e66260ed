//! The emulator's one error type: what a request, the seed or the state file got wrong, in the
//! words the real service (or a fix) would use. Rendered into Key Vault / Entra error bodies by
//! the handlers; never carries key material.

/// Why the emulator refused something or could not load it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmuError {
    /// An uploaded certificate (PEM or DER) cannot be read.
    #[error("{0}")]
    Certificate(String),
    /// Stored key or certificate material (state file) does not decode.
    #[error("stored key material does not decode: {0}")]
    Material(String),
    /// An imported JWK is not a usable RSA private key.
    #[error("{0}")]
    Jwk(String),
    /// A key file of the seed cannot be read.
    #[error("key {}: {detail}", path.display())]
    KeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A seeded key's fixed version is not 32 hex digits.
    #[error("key {key}: version must be 32 hex digits")]
    KeyVersion {
        /// The key.
        key: String,
    },
    /// An RSA size Key Vault does not offer.
    #[error("RSA key size {bits} is not one Key Vault offers (2048, 3072, 4096)")]
    KeySize {
        /// The size asked for.
        bits: usize,
    },
    /// Key generation failed.
    #[error("key generation failed: {0}")]
    Generate(String),
    /// A role name that is not a preset, with no data actions.
    #[error("unknown role {name:?}; presets are {presets}, or give data_actions")]
    UnknownRole {
        /// The name given.
        name: String,
        /// The presets.
        presets: String,
    },
    /// A seeded role assignment with neither a role nor data actions.
    #[error("vault {vault}: a role assignment needs role or data_actions")]
    RoleWithoutActions {
        /// The vault.
        vault: String,
    },
    /// A ciphertext of the wrong length for the key.
    #[error("The ciphertext is {got} bytes; this {bits}-bit key needs exactly {need}.")]
    CiphertextLength {
        /// Its length.
        got: usize,
        /// The key's modulus length.
        need: usize,
        /// The key's size.
        bits: usize,
    },
    /// The ciphertext does not decrypt.
    #[error(
        "The parameter is incorrect: the ciphertext does not decrypt with this key and algorithm."
    )]
    DoesNotDecrypt,
    /// A plaintext too long for the algorithm and key.
    #[error("The plaintext is {got} bytes; {alg} with this key takes at most {max}.")]
    PlaintextLength {
        /// Its length.
        got: usize,
        /// The algorithm.
        alg: String,
        /// The most the key takes.
        max: usize,
    },
    /// A sign or verify request Key Vault would refuse (algorithm, digest length, encoding).
    #[error("{0}")]
    Signing(String),
    /// The RSA operation failed.
    #[error("the RSA operation failed: {0}")]
    Rsa(String),
    /// No such key (or version).
    #[error("no key {key}{}", version.as_ref().map(|v| format!(" (version {v})")).unwrap_or_default())]
    NoKey {
        /// The key.
        key: String,
        /// The version asked for.
        version: Option<String>,
    },
    /// No such deleted key.
    #[error("no deleted key {key}")]
    NoDeletedKey {
        /// The key.
        key: String,
    },
    /// Purge refused by purge protection.
    #[error(
        "purge protection is on for this vault (pass {{\"force\": true}} to purge anyway, as the retention period ending would)"
    )]
    PurgeProtected,
    /// An admin key action this emulator does not know.
    #[error(
        "unknown key action {action:?}; use disable, enable, update, delete, recover, purge or rotate"
    )]
    UnknownAction {
        /// The action.
        action: String,
    },
    /// No certificate with that thumbprint on the app.
    #[error("no certificate with thumbprint {thumbprint}")]
    NoCertificate {
        /// The thumbprint.
        thumbprint: String,
    },
}
