//! What `byok cert` prints: the generated files with the setup guide's next steps (Option 1:
//! Authenticate App using Certificates), and a configured credential's details. Text only; it
//! must never include a private key or a password.

use std::fmt::Write as _;

use super::{CertInfo, Written};

/// The report of `byok cert generate`: the certificate, the files, and the guide's next steps.
pub fn generated(
    tenant: &str,
    bits: u32,
    days: u32,
    w: &Written,
    i: &CertInfo,
    password_env: Option<&str>,
) -> String {
    let credential_line = match password_env {
        Some(v) => format!(
            "credential = {{ type = \"certificate\", path = \"{}\", password_env = \"{v}\" }}",
            w.credential.display()
        ),
        None => format!(
            "credential = {{ type = \"certificate\", path = \"{}\" }}",
            w.credential.display()
        ),
    };
    let cer_name = w
        .cer
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "Generated a certificate credential for tenant {tenant}");
    let _ = writeln!(s, "  subject      {}", i.subject);
    let _ = writeln!(
        s,
        "  valid        {} to {} ({days} days)",
        i.not_before, i.not_after
    );
    let _ = writeln!(s, "  key          RSA-{bits}");
    let _ = writeln!(
        s,
        "  thumbprint   SHA-1   {}  (the Thumbprint the Azure portal shows)",
        i.sha1
    );
    let _ = writeln!(s, "               SHA-256 {}", i.sha256);
    let _ = writeln!(s, "Files");
    let _ = writeln!(
        s,
        "  {:<40} upload this to the app registration (public certificate, DER)",
        w.cer.display()
    );
    let _ = writeln!(
        s,
        "  {:<40} the same public certificate as PEM",
        w.pem.display()
    );
    let _ = writeln!(
        s,
        "  {:<40} private key and certificate for the worker (mode 0600): never send it",
        w.credential.display()
    );
    let _ = writeln!(
        s,
        "Next steps (setup guide, Option 1: Authenticate App using Certificates)"
    );
    let steps = [
        "In the Microsoft Entra admin center, go to App registrations and open the app (e.g. KeyVaultAccessApp).".to_owned(),
        "Go to Certificates & secrets. Under Certificates, click Upload certificate (or Update certificate).".to_owned(),
        format!("Click Select file and upload {cer_name}. (Optional) Enter a description. Click Add."),
        format!("Check that the portal lists thumbprint {} for it.", i.sha1),
        format!(
            "Configure the tenant's credential (rotation: keep the current certificate in path and set next_path to this one until the old one is removed from the app):\n       {credential_line}"
        ),
        format!("Run: byok check-key --config <config> --tenant {tenant}"),
    ];
    for (n, step) in steps.iter().enumerate() {
        let _ = writeln!(s, "  {}. {step}", n + 1);
    }
    s
}

/// One configured certificate of `byok cert show`.
pub fn shown(tenant: &str, role: &str, i: &CertInfo) -> String {
    let matches = match i.key_matches {
        Some(true) => "yes",
        Some(false) => "NO: the private key is not this certificate's",
        None => "no private key in the file",
    };
    format!(
        "{tenant} ({role} certificate) {}\n  subject      {}\n  SHA-1        {}\n  SHA-256      {}\n  not before   {}\n  not after    {} ({} days left)\n  key matches  {matches}\n",
        i.path, i.subject, i.sha1, i.sha256, i.not_before, i.not_after, i.days_left
    )
}
