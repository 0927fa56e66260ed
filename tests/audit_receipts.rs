//! Key-usage receipts (docs/audit-v1.md §6) on Tansu with the Key Vault emulator, in a test
//! binary of their own: receipts are kept per process (one audit writer per process in
//! production), so no other test's worker may share this process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::audit_run::Run;

/// Key-usage receipts (§6): every Key Vault request of the worker and of `byok rewrap` carries
/// its own `x-ms-client-request-id`, and `byok audit kv --tenant` lists exactly the requests the
/// tenant's vault logged: none missing, none extra; each with its operation and purpose, and the
/// DEK ids for encrypt and decrypt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receipts_match_each_vaults_request_log_one_for_one() {
    let mut run = Run::start().await;
    run.capture(90).await;
    run.work_until(90).await;
    run.rotate_and_rewrap_globex().await;

    for (tenant, vault) in [("acme", "acme-vault"), ("globex", "globex-kv")] {
        let (ok, out) = common::run_byok(vec![
            "audit".into(),
            "kv".into(),
            "--config".into(),
            run.config.source.clone().into(),
            "--tenant".into(),
            tenant.into(),
            "--json".into(),
        ])
        .await;
        assert!(ok, "{out}");
        let json = &out[out.find('{').unwrap()..];
        let report: serde_json::Value = serde_json::from_str(json).unwrap();
        let receipts = report["receipts"].as_array().unwrap();
        let ours: BTreeSet<String> = receipts
            .iter()
            .map(|r| r["req"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ours.len(), receipts.len(), "one receipt per request id");
        let log = run.emu.admin.requests(vault).await.unwrap();
        let theirs: BTreeSet<String> = log["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r["client_request_id"]
                    .as_str()
                    .unwrap_or("(none)")
                    .to_owned()
            })
            .collect();
        assert!(!theirs.contains("(none)"), "every request carried an id");
        assert_eq!(
            ours, theirs,
            "{tenant}: the receipts and {vault}'s own log name the same requests"
        );
        let ops: BTreeSet<(&str, &str)> = receipts
            .iter()
            .map(|r| (r["op"].as_str().unwrap(), r["purpose"].as_str().unwrap()))
            .collect();
        assert!(ops.contains(&("encrypt", "new-dek")), "{ops:?}");
        assert!(ops.contains(&("get", "monitor")), "{ops:?}");
        for r in receipts {
            if r["op"] == "encrypt" || r["op"] == "decrypt" {
                assert_eq!(r["deks"].as_array().unwrap().len(), 1, "{r}");
            }
        }
        if tenant == "globex" {
            assert!(ops.contains(&("decrypt", "rewrap")), "{ops:?}");
            assert!(ops.contains(&("encrypt", "rewrap")), "{ops:?}");
        }
        eprintln!("{tenant}: {} requests, {ops:?}", receipts.len());
    }
}
