//! The KEK side: the tenant's RSA key in Azure Key Vault that wraps DEKs.
//!
//! For now this holds the identity of a key version, [`KekId`], as the registry records it. The
//! provider trait (wrap, unwrap, key state) and its Azure implementation build on it.

use std::fmt;

use url::Url;

/// A Key Vault key identifier including its version, exactly as Key Vault returns it in `kid`:
/// `https://<vault>.vault.azure.net/keys/<name>/<version>`. The text is kept byte for byte (it is
/// an identity in the registry); the parts are read from it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KekId {
    text: String,
    /// Byte ranges of name and version inside `text`.
    name: (usize, usize),
    version: (usize, usize),
}

/// A `kek` that is not a versioned Key Vault key identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a versioned Key Vault key id ({reason}); expected https://<vault>.vault.azure.net/keys/<name>/<version>"
)]
pub struct InvalidKekId {
    text: String,
    reason: &'static str,
}

impl KekId {
    /// Parses a versioned key identifier.
    pub fn parse(text: &str) -> Result<Self, InvalidKekId> {
        let bad = |reason| InvalidKekId {
            text: text.to_owned(),
            reason,
        };
        let url = Url::parse(text).map_err(|_| bad("not a URL"))?;
        if url.scheme() != "https" {
            return Err(bad("not https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("has a query or fragment"));
        }
        // The path is /keys/<name>/<version>; the emulator may serve vaults under a path
        // prefix (/vaults/<vault>/keys/...), so the last three segments are what count.
        let path = url.path();
        let segs: Vec<&str> = path.split('/').collect();
        if segs.len() < 4 || segs[segs.len() - 3] != "keys" {
            return Err(bad("path is not /keys/<name>/<version>"));
        }
        let name = segs[segs.len() - 2];
        let version = segs[segs.len() - 1];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(bad("key name must be 1-127 letters, digits or dashes"));
        }
        if version.is_empty() || !version.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad("no key version"));
        }
        let path_start = text
            .find(path)
            .ok_or_else(|| bad("path is not in canonical form"))?;
        let version_end = path_start + path.len();
        let version_start = version_end - version.len();
        let name_end = version_start - 1;
        let name_start = name_end - name.len();
        Ok(Self {
            text: text.to_owned(),
            name: (name_start, name_end),
            version: (version_start, version_end),
        })
    }

    /// The identifier text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// The key name.
    pub fn name(&self) -> &str {
        &self.text[self.name.0..self.name.1]
    }
    /// The key version.
    pub fn version(&self) -> &str {
        &self.text[self.version.0..self.version.1]
    }
}

impl fmt::Display for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KekId({})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_public_private_link_and_prefixed_ids() {
        let k = KekId::parse(
            "https://acme-vault.vault.azure.net/keys/byok-key/78deebed173b48e48f55abf87ed4cf71",
        )
        .unwrap();
        assert_eq!(k.name(), "byok-key");
        assert_eq!(k.version(), "78deebed173b48e48f55abf87ed4cf71");
        let p = KekId::parse("https://v.privatelink.vaultcore.azure.net/keys/k1/abc").unwrap();
        assert_eq!((p.name(), p.version()), ("k1", "abc"));
        let e = KekId::parse("https://127.0.0.1:8443/vaults/acme/keys/k/0011").unwrap();
        assert_eq!((e.name(), e.version()), ("k", "0011"));
    }

    #[test]
    fn refuses_unversioned_and_non_https() {
        for bad in [
            "https://v.vault.azure.net/keys/k",
            "https://v.vault.azure.net/keys/k/",
            "http://v.vault.azure.net/keys/k/1",
            "https://v.vault.azure.net/secrets/k/1",
            "https://v.vault.azure.net/keys/k/1?x=1",
            "not a url",
        ] {
            assert!(KekId::parse(bad).is_err(), "{bad}");
        }
    }
}
