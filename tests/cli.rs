//! The `byok` binary: `inspect` and `config check`, black-box.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

mod common;

use std::path::Path;

use common::{byok, fixture};

fn run(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_a_raw_fixture() {
    let (ok, out, err) = run(byok().arg("inspect").arg(fixture("golden/chat.sealed")));
    assert!(ok, "{err}");
    assert!(out.contains("envelope v1"), "{out}");
    assert!(
        out.contains("0193a1c2-7a4e-7c3b-9f10-2b8e5d6a4c21"),
        "{out}"
    );
    assert!(out.contains("prefix 5eed0001, counter 42"), "{out}");
    assert!(
        out.contains("240 bytes = 31 header + 193 ciphertext + 16 tag"),
        "{out}"
    );
}

#[test]
fn inspect_hex_from_stdin_as_json() {
    let golden = common::json("golden/golden.json");
    let hex = golden["cases"][2]["sealed_hex"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut child = byok()
        .args(["inspect", "--hex", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(hex.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["compressed"], true);
    assert_eq!(v["dek_id"], "0193a1c2-7a4e-7c3b-9f10-2b8e5d6a4c23");
    assert_eq!(v["nonce_counter"], u64::MAX);
    assert_eq!(v["total_len"], hex.len() / 2);
}

#[test]
fn inspect_says_why_bytes_are_not_v1() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[u8], &str); 4] = [
        (
            br#"{"tenant_id":"acme","body":"hi"}"#,
            "looks like JSON text",
        ),
        (&[1, 1, 0, 9], "shorter than the 47 bytes"),
        (
            &[
                0x01, 0x07, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            "suite byte is 0x07",
        ),
        (b"", "empty"),
    ];
    for (i, (bytes, expect)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("v{i}"));
        std::fs::write(&p, bytes).unwrap();
        let (ok, _, err) = run(byok().arg("inspect").arg(&p));
        assert!(!ok);
        assert!(
            err.contains("not a v1 sealed value") && err.contains(expect),
            "{err}"
        );
    }
    let (ok, _, err) = run(byok()
        .args(["inspect", "--hex"])
        .arg(fixture("golden/chat.sealed")));
    assert!(!ok && err.contains("hex"), "{err}");
}

/// Copies the example configuration's credential files into `dir/example` with `mode` (git
/// does not keep file modes, so the checkout's own are whatever the clone made).
fn copy_example_secrets(dir: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    std::fs::create_dir(dir.join("example")).unwrap();
    for f in ["acme.pem", "globex.secret", "operator.secret"] {
        let to = dir.join("example").join(f);
        std::fs::copy(root.join("example").join(f), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// The example configuration in a temp dir, its credential files with `mode`.
fn example_copy(mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    copy_example_secrets(dir.path(), mode);
    let p = dir.path().join("byok.toml");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    std::fs::copy(root.join("byok.example.toml"), &p).unwrap();
    (dir, p)
}

#[test]
fn the_example_config_passes() {
    let (_dir, example) = example_copy(0o600);
    let (ok, out, err) = run(byok().args(["config", "check"]).arg(&example));
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("ok (3 tenant(s), 2 with BYOK enabled"),
        "{out}"
    );
    assert!(
        !err.contains("warning"),
        "the example should check clean:\n{err}"
    );
}

#[test]
fn secret_files_other_users_can_read_are_refused_unless_allowed() {
    let (_dir, example) = example_copy(0o644);
    let (ok, out, err) = run(byok().args(["config", "check"]).arg(&example));
    assert!(!ok, "{out}");
    assert!(
        err.contains("operator.secret holds a secret and other users can read it (mode 644)")
            && err.contains("chmod 600")
            && err.contains("--allow-insecure-permissions"),
        "{err}"
    );
    let (ok, out, err) = run(byok()
        .args(["config", "check", "--allow-insecure-permissions"])
        .arg(&example));
    assert!(ok, "{out}\n{err}");
    assert!(
        err.contains("warning") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn kafka_secrets_come_from_files_and_never_from_the_config_file() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, example) = example_copy(0o600);
    let text = std::fs::read_to_string(&example).unwrap();
    let with = |extra: &str| {
        let edited = text.replacen(
            "\n[kafka.producer]",
            &format!("\n{extra}\n[kafka.producer]"),
            1,
        );
        assert_ne!(edited, text);
        std::fs::write(&example, edited).unwrap();
        run(byok().args(["config", "check"]).arg(&example))
    };
    // inline: refused, with the fix, and the value never echoed
    let (ok, _, err) = with("\"sasl.password\" = \"hunter2-inline\"");
    assert!(!ok);
    assert!(
        err.contains("kafka.consumer.\"sasl.password\"") && err.contains("{ file ="),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    // from a private file: accepted; Debug of the loaded configuration never shows it
    let secret = dir.path().join("kafka.password");
    std::fs::write(&secret, "hunter2-from-file\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, out, err) = with(&format!(
        "\"sasl.password\" = {{ file = \"{}\" }}\n\"sasl.username\" = \"worker\"",
        secret.display()
    ));
    assert!(ok, "{out}\n{err}");
    let config = byok::config::Config::load(&example).unwrap();
    assert_eq!(
        config.kafka.consumer.get("sasl.password"),
        Some("hunter2-from-file")
    );
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(
        debug.contains("sasl.username") && debug.contains("<redacted>"),
        "{debug}"
    );
}

/// Copies the example config and its example credentials into a temp dir, applies `edit`, and
/// returns the check's stderr (asserting it failed).
fn broken(edit: impl Fn(String) -> String) -> String {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    copy_example_secrets(dir.path(), 0o600);
    let text = std::fs::read_to_string(root.join("byok.example.toml")).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    let p = dir.path().join("byok.toml");
    std::fs::write(&p, edited).unwrap();
    let (ok, out, err) = run(byok().args(["config", "check"]).arg(&p));
    assert!(!ok, "a broken config passed:\n{out}");
    assert!(err.contains("the worker will not start"), "{err}");
    err
}

#[test]
fn broken_configs_fail_naming_the_field_and_the_fix() {
    let cases: Vec<(Box<dyn Fn(String) -> String>, &[&str])> = vec![
        (
            Box::new(|t| t.replace("max_messages = 16777216 ", "max_messages = 4294967296 ")),
            &["dek.max_messages", "4294967296", "fix:"],
        ),
        (
            // smaller than one sealing job: every DEK would retire before sealing anything
            Box::new(|t| t.replace("max_bytes = \"64 GiB\"", "max_bytes = \"1 MiB\"")),
            &["dek.max_bytes", "less than one sealing job", "fix:"],
        ),
        (
            Box::new(|t| {
                t.replace(
                    "https://acme-vault.vault.azure.net",
                    "http://acme-vault.vault.azure.net",
                )
            }),
            &["tenant \"acme\").vault_url", "not https"],
        ),
        (
            Box::new(|t| {
                t.replace(
                    "client_id = \"4a1e6a3e-9d2f-4f7c-8a55-0c6e2d1b9f33\"",
                    "client_id = \"my-app\"",
                )
            }),
            &["client_id", "not a GUID", "Application (client) ID"],
        ),
        (
            Box::new(|t| t.replace("\"linger.ms\" = 5", "\"enable.idempotence\" = false")),
            &[
                "kafka.producer.\"enable.idempotence\"",
                "owned by the worker",
            ],
        ),
        (
            Box::new(|t| {
                t.replace(
                    "\"session.timeout.ms\" = 45000",
                    "\"enable.auto.commit\" = true",
                )
            }),
            &[
                "kafka.consumer.\"enable.auto.commit\"",
                "commits offsets itself",
            ],
        ),
        (
            Box::new(|t| t.replace("max_wait = \"50ms\"", "max_wiat = \"50ms\"")),
            &["[batch]", "unknown field `max_wiat`"],
        ),
        (
            Box::new(|t| t.replace("max_age = \"1h\"", "max_age = \"an hour\"")),
            &["[dek]"],
        ),
        (
            Box::new(|t| {
                t.replace(
                    "path = \"example/acme.pem\"",
                    "path = \"example/missing.pem\"",
                )
            }),
            &["credential.path", "missing.pem", "cannot be read"],
        ),
        (
            Box::new(|t| {
                t.replace(
                    "file = \"example/globex.secret\"",
                    "env = \"BYOK_TEST_UNSET_SECRET_VAR\"",
                )
            }),
            &["credential.env", "BYOK_TEST_UNSET_SECRET_VAR is not set"],
        ),
        (
            Box::new(|t| t.replace("id = \"globex\"", "id = \"acme\"")),
            &["also defined at"],
        ),
        (
            Box::new(|t| t.replace("id = \"initech\"", "id = \"_quarantine\"")),
            &["reserved"],
        ),
        (
            Box::new(|t| {
                t.replace(
                    "archive_topic = \"archive.messages\"",
                    "archive_topic = \"capture.messages\"",
                )
            }),
            &["kafka.archive_topic", "also an input topic"],
        ),
        (
            Box::new(|t| {
                t.replace(
                    "key_version = \"78deebed173b48e48f55abf87ed4cf71\"",
                    "key_version = \"latest\"",
                )
            }),
            &["key_version", "32 hex digits"],
        ),
        (
            Box::new(|t| t.replace("[quarantine]", "[quarantine_]")),
            &[
                "[quarantine]",
                "missing",
                "unknown top-level key `quarantine_`",
            ],
        ),
        (
            Box::new(|t| {
                t.replacen(
                    "delivery = \"at-least-once\"",
                    "delivery = \"at-least-once\"\ncopy_source_headers = true",
                    1,
                )
            }),
            &["kafka.copy_source_headers", "not supported", "unencrypted"],
        ),
        (
            Box::new(|t| t.replace("group_id = \"byok-pipeline\"", "group_id = \"byok-pipeline")),
            &["line 26", "fix the TOML syntax"],
        ),
    ];
    for (edit, expects) in cases {
        let err = broken(edit);
        for e in expects {
            assert!(err.contains(e), "expected {e:?} in:\n{err}");
        }
    }
}

#[test]
fn several_problems_are_reported_at_once() {
    let err = broken(|t| {
        t.replace(
            "bootstrap_servers = \"127.0.0.1:9092\"",
            "bootstrap_servers = \"kafka\"",
        )
        .replace("https://globex-kv", "http://globex-kv")
        .replace("listen = \"127.0.0.1:9464\"", "listen = \"everywhere\"")
    });
    for e in [
        "kafka.bootstrap_servers",
        "vault_url",
        "metrics.listen",
        "3 error(s)",
    ] {
        assert!(err.contains(e), "expected {e:?} in:\n{err}");
    }
}

#[test]
fn tenants_come_from_a_directory_too() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    copy_example_secrets(dir.path(), 0o600);
    std::fs::create_dir(dir.path().join("tenants.d")).unwrap();
    std::fs::write(
        dir.path().join("tenants.d/umbrella.toml"),
        "vault_url = \"https://umbrella.vault.azure.net\"\nkey_name = \"k\"\nentra_tenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\nclient_id = \"4a1e6a3e-9d2f-4f7c-8a55-0c6e2d1b9f33\"\ncredential = { type = \"client-secret\", env = \"BYOK_TEST_SECRET_PRESENT\" }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tenants.d/hooli.toml"),
        "byok_enabled = false\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(root.join("byok.example.toml"))
        .unwrap()
        .replace(
            "# tenants_dir = \"tenants.d\"",
            "tenants_dir = \"tenants.d\"",
        );
    let p = dir.path().join("byok.toml");
    std::fs::write(&p, text).unwrap();
    let (ok, out, err) = run(byok()
        .args(["config", "check"])
        .arg(&p)
        .env("BYOK_TEST_SECRET_PRESENT", "s3cr3t-value"));
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("5 tenant(s), 3 with BYOK enabled"), "{out}");
    assert!(!out.contains("s3cr3t") && !err.contains("s3cr3t"));
    // the same folder with the env var missing names the file and the variable
    let (ok, _, err) = run(byok()
        .args(["config", "check"])
        .arg(&p)
        .env_remove("BYOK_TEST_SECRET_PRESENT"));
    assert!(!ok);
    assert!(
        err.contains("umbrella.toml") && err.contains("BYOK_TEST_SECRET_PRESENT"),
        "{err}"
    );
}

#[test]
fn a_secret_file_never_reaches_the_output() {
    // a broken config whose secret file is readable: nothing of the secret is printed
    let err = broken(|t| t.replace("key_name = \"archive-kek\"", "key_name = \"archive kek!\""));
    assert!(!err.contains("example-client-secret-not-real"), "{err}");
    assert!(err.contains("key_name"), "{err}");
}

#[test]
fn the_demo_passes_end_to_end() {
    let (ok, out, err) = run(byok().args(["demo", "--messages", "600"]));
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("archived, decrypted ok   600"), "{out}");
    assert!(out.contains("quarantined, decrypted   3"), "{out}");
    assert!(out.contains("mismatches               0"), "{out}");
}

#[test]
fn replay_says_what_is_missing_or_wrong_before_touching_kafka() {
    let (_dir, example) = example_copy(0o600);
    let replay = |args: &[&str]| {
        let (ok, out, err) = run(byok().args(["replay", "--config"]).arg(&example).args(args));
        assert!(!ok, "{args:?} passed:\n{out}");
        err
    };
    let err = replay(&[]);
    assert!(
        err.contains("--from TOPIC --to TOPIC") && err.contains("--quarantine"),
        "{err}"
    );
    let err = replay(&["--from", "archive.messages", "--to", "archive.messages"]);
    assert!(err.contains("both archive.messages"), "{err}");
    let err = replay(&["--from", "archive.messages", "--to", "byok.deks"]);
    assert!(err.contains("registry"), "{err}");
    let err = replay(&["--from", "archive.messages", "--to", "archive/v2"]);
    assert!(err.contains("'/'"), "{err}");
    let err = replay(&["--from", "archive.messages", "--to", "a.v2", "--rate", "0"]);
    assert!(err.contains("--rate"), "{err}");
    let err = replay(&[
        "--from",
        "archive.messages",
        "--to",
        "a.v2",
        "--since",
        "yesterday",
    ]);
    assert!(err.contains("RFC 3339"), "{err}");
    let err = replay(&[
        "--from",
        "archive.messages",
        "--to",
        "a.v2",
        "--tenant",
        "nobody",
    ]);
    assert!(err.contains("--tenant nobody"), "{err}");
    let err = replay(&["--quarantine", "--from", "archive.messages", "--to", "a.v2"]);
    assert!(err.contains("cannot be used with"), "{err}");
}

/// `byok ... | head -1`: the command ends quietly when its reader goes away, never with a panic
/// and a backtrace on the closed pipe. The reader closes before the command writes anything
/// (generating the RSA key comes first).
#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = byok()
        .args(["cert", "generate", "--tenant", "acme", "--out-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.success() || out.status.signal() == Some(13),
        "{:?}: {err}",
        out.status
    );
}

#[test]
fn config_check_connect_finds_missing_topics_and_wrong_cleanup_policies() {
    let tansu = common::tansu::Tansu::start();
    // a day of retention: not well over keys.unknown_key_hold (24h by default)
    tansu.create_topic_with("capture.messages", 2, &["retention.ms=86400000"]);
    tansu.create_topic_with("archive.messages", 2, &["cleanup.policy=compact"]);
    tansu.create_topic_with("byok.deks", 1, &["cleanup.policy=compact"]);
    tansu.create_topic_with("byok.quarantine", 1, &["cleanup.policy=delete"]);
    tansu.create_topic_with("byok.audit", 1, &["cleanup.policy=delete"]);
    // byok.keks is not created
    let (_dir, example) = example_copy(0o600);
    let text = std::fs::read_to_string(&example).unwrap().replace(
        "bootstrap_servers = \"127.0.0.1:9092\"",
        &format!("bootstrap_servers = \"{}\"", tansu.bootstrap()),
    );
    std::fs::write(&example, text).unwrap();
    let (ok, out, err) = run(byok().args(["config", "check", "--connect"]).arg(&example));
    assert!(!ok, "{out}\n{err}");
    assert!(
        out.contains("ok    capture.messages: input, 2 partition(s)"),
        "{out}"
    );
    assert!(out.contains("ok    byok.quarantine: quarantine"), "{out}");
    assert!(out.contains("ok    byok.deks: registry"), "{out}");
    assert!(out.contains("ok    byok.audit: audit"), "{out}");
    assert!(
        out.contains("FAIL  archive.messages: cleanup.policy is compact, it must be delete"),
        "{out}"
    );
    assert!(
        out.contains("FAIL  byok.keks: does not exist")
            && out.contains("--create --topic byok.keks")
            && out.contains("cleanup.policy=compact"),
        "{out}"
    );
    assert!(err.contains("2 topic(s) missing or misconfigured"), "{err}");
}
