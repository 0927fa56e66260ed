//! Where each captured record goes, and whose DEK seals it: the tenant's archive, the quarantine
//! under the tenant's own key (revoked), or the quarantine under the operator's key (no usable
//! tenant). Pure: no I/O, no keys; the header values shared by many records are cached here.
//!
//! This module must never decide anything from bytes it did not read through [`super::scan`], and
//! never route a configured BYOK tenant's record to the operator's key except as
//! [`crate::lifecycle::monitor::Revoked`] says (no public key ever seen).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};

use super::scan::{TenantOf, tenant_of};
use super::stage::StageError;
use crate::config::{Config, TenantId};
use crate::dek::DekId;
use crate::envelope::headers::QuarantineReason;
use crate::lifecycle::monitor::{KeyViews, Revoked};
use crate::registry::QUARANTINE_TENANT;

/// Where a record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The tenant's archive, sealed under its DEK.
    Archive(TenantId),
    /// The tenant's key is revoked: quarantine, sealed under a DEK of the tenant wrapped
    /// locally with its last known public key.
    Revoked {
        /// The tenant.
        tenant: TenantId,
        /// Why its key cannot be used.
        reason: QuarantineReason,
        /// What the vault said.
        detail: String,
    },
    /// The tenant's key is revoked and no public key of it was ever seen: the record waits
    /// (its partition paused) for at most `keys.unknown_key_hold` ([`crate::lifecycle::hold`]),
    /// then goes to the quarantine under the operator's key (`key-unknown`).
    Hold {
        /// The tenant.
        tenant: TenantId,
        /// What the vault said.
        detail: String,
    },
    /// The quarantine under the operator's key.
    Quarantine {
        /// Why.
        reason: QuarantineReason,
        /// The tenant the record claims, if any.
        tenant: Option<String>,
        /// What is wrong.
        detail: String,
    },
}

impl Route {
    /// The tenant in the record's AAD: its owner, except under the operator's key, where the
    /// tenant the record names is bound too ([`crate::tenant::operator_aad`]).
    pub fn aad_tenant(&self) -> String {
        match self {
            Route::Quarantine { tenant, .. } => crate::tenant::operator_aad(tenant.as_deref()),
            other => other.owner().to_owned(),
        }
    }

    /// Whose DEK seals the record: the tenant's, or the operator's quarantine DEK.
    pub fn owner(&self) -> &str {
        match self {
            Route::Archive(t)
            | Route::Revoked { tenant: t, .. }
            | Route::Hold { tenant: t, .. } => t.as_str(),
            Route::Quarantine { .. } => QUARANTINE_TENANT,
        }
    }
}

/// The route of one record.
pub fn route(m: &OwnedMessage, config: &Config, revoked: &Revoked) -> Route {
    let headers: Vec<(&str, Option<&[u8]>)> = m
        .headers()
        .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
        .unwrap_or_default();
    let t = match tenant_of(headers, m.payload()) {
        TenantOf::Missing(why) => {
            return Route::Quarantine {
                reason: QuarantineReason::Malformed,
                tenant: None,
                detail: why.to_owned(),
            };
        }
        TenantOf::Found(t) => t,
    };
    // A string that is not a tenant id is never echoed into a header or a log: it could be
    // anything a producer wrote, of any length.
    let Ok(id) = TenantId::parse(&t) else {
        return Route::Quarantine {
            reason: QuarantineReason::UnknownTenant,
            detail: format!(
                "the tenant named by the record ({} bytes) is not a valid tenant id",
                t.len()
            ),
            tenant: None,
        };
    };
    let Some(tenant) = config.tenants.get(&id) else {
        return Route::Quarantine {
            reason: QuarantineReason::UnknownTenant,
            detail: "tenant is not configured".to_owned(),
            tenant: Some(t),
        };
    };
    if !tenant.byok_enabled {
        return Route::Quarantine {
            reason: QuarantineReason::ByokDisabled,
            detail: "BYOK is not enabled for this tenant".to_owned(),
            tenant: Some(t),
        };
    }
    match revoked.get(tenant.id.as_str()) {
        None => Route::Archive(tenant.id.clone()),
        Some((reason, detail, Some(_))) => Route::Revoked {
            tenant: tenant.id.clone(),
            reason: *reason,
            detail: detail.clone(),
        },
        // no public key ever seen for it: it waits, and only after keys.unknown_key_hold does
        // the operator's key take it (the stage decides)
        Some((reason, detail, None)) => Route::Hold {
            tenant: tenant.id.clone(),
            detail: format!("{reason}: {detail}"),
        },
    }
}

/// Records of tenants with no DEK possible and no public key ever seen ([`Route::Hold`], and the
/// archive routes of a tenant whose vault does not answer): they wait until
/// `keys.unknown_key_hold` is over ([`crate::lifecycle::hold`]), then go to the quarantine under
/// the operator's key (`key-unknown`, `vault-unavailable`) as a last resort. Returns whether a
/// route changed, or the records that wait.
pub fn settle_holds(
    routes: &mut [Route],
    views: &KeyViews,
    limit: std::time::Duration,
) -> Result<bool, StageError> {
    let holds = &views.holds;
    // the common case, nothing held and no record to hold, costs one lock per batch
    let any_held = holds.count() > 0;
    if !any_held && !routes.iter().any(|r| matches!(r, Route::Hold { .. })) {
        return Ok(false);
    }
    let mut changed = false;
    let mut waiting: (Vec<String>, Option<String>, Vec<(usize, String)>) =
        (Vec::new(), None, Vec::new());
    for (i, r) in routes.iter_mut().enumerate() {
        let (tenant, reason, what, over) = match r {
            Route::Hold { tenant, detail } => {
                let over = holds.hold(tenant.as_str());
                (
                    tenant.clone(),
                    QuarantineReason::KeyUnknown,
                    detail.clone(),
                    over,
                )
            }
            Route::Archive(t) if any_held && holds.over(t.as_str()) => {
                if views.public_key(t.as_str()).is_some() {
                    holds.release(t.as_str());
                    continue;
                }
                let what = "its vault did not answer".to_owned();
                (t.clone(), QuarantineReason::VaultUnavailable, what, true)
            }
            _ => continue,
        };
        if !over {
            if !waiting.0.iter().any(|t| t == tenant.as_str()) {
                waiting.0.push(tenant.to_string());
            }
            waiting.1.get_or_insert(what);
            waiting.2.push((i, tenant.to_string()));
            continue;
        }
        *r = Route::Quarantine {
            reason,
            detail: format!(
                "{what}; no public key of the tenant ever seen: held {} (keys.unknown_key_hold), then sealed under the operator's quarantine key as a last resort",
                humantime::format_duration(limit)
            ),
            tenant: Some(tenant.to_string()),
        };
        changed = true;
    }
    if changed {
        tracing::error!(tenants = ?routes.iter().filter_map(|r| match r { Route::Quarantine { reason: QuarantineReason::KeyUnknown | QuarantineReason::VaultUnavailable, tenant, .. } => tenant.clone(), _ => None }).collect::<std::collections::BTreeSet<_>>(), "hold over: a BYOK tenant's records sealed under the operator's key as a last resort (byok_records_quarantined_total)");
    }
    let (tenants, detail, held) = waiting;
    if held.is_empty() {
        Ok(changed)
    } else {
        Err(StageError::Waiting {
            tenants,
            detail: detail.unwrap_or_default(),
            held,
        })
    }
}

/// The record indices of `routes` grouped by DEK owner (tenant or quarantine).
pub fn group(routes: &[Route]) -> BTreeMap<String, Vec<usize>> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in routes.iter().enumerate() {
        groups.entry(r.owner().to_owned()).or_default().push(i);
    }
    groups
}

/// Routes every record and groups the record indices by DEK owner (tenant or quarantine).
pub fn route_all(
    batch: &[OwnedMessage],
    config: &Config,
    revoked: &Revoked,
) -> (Vec<Route>, BTreeMap<String, Vec<usize>>) {
    let routes: Vec<Route> = batch.iter().map(|m| route(m, config, revoked)).collect();
    let groups = group(&routes);
    (routes, groups)
}

/// Kept across batches: each (owner, route kind)'s output topic and tenant header value, each
/// DEK's id header value (the DEK map is cleared when it grows past a bound).
#[derive(Debug, Default)]
pub struct HeaderCache {
    /// [quarantine routes, archive routes], by owner.
    owners: [HashMap<String, (Arc<str>, Bytes)>; 2],
    deks: HashMap<DekId, Bytes>,
}

impl HeaderCache {
    /// The output topic of `route` and its owner as a header value.
    pub fn owner(&mut self, route: &Route, config: &Config) -> (Arc<str>, Bytes) {
        let map = &mut self.owners[usize::from(matches!(route, Route::Archive(_)))];
        if let Some((topic, tenant)) = map.get(route.owner()) {
            return (Arc::clone(topic), tenant.clone());
        }
        let topic = match route {
            Route::Archive(t) => config.kafka.archive_topic.topic_for(t),
            Route::Quarantine { .. } | Route::Revoked { .. } | Route::Hold { .. } => {
                config.kafka.quarantine_topic.clone()
            }
        };
        let entry = (
            Arc::<str>::from(topic),
            Bytes::copy_from_slice(route.owner().as_bytes()),
        );
        map.insert(route.owner().to_owned(), entry.clone());
        entry
    }

    /// The id of `dek` as a header value.
    pub fn dek(&mut self, id: DekId) -> Bytes {
        if self.deks.len() > 65_536 {
            self.deks.clear();
        }
        self.deks
            .entry(id)
            .or_insert_with(|| Bytes::from(id.to_string()))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};

    fn config() -> Config {
        Config::load_with(
            std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/config/byok.example.toml"
            )),
            // the checkout's example secrets have whatever mode the clone gave them
            crate::config::LoadOptions {
                allow_insecure_permissions: true,
            },
        )
        .unwrap()
    }

    fn msg(value: &str, tenant_header: Option<&str>) -> OwnedMessage {
        let headers = tenant_header.map(|t| {
            OwnedHeaders::new().insert(Header {
                key: "tenant-id",
                value: Some(t),
            })
        });
        OwnedMessage::new(
            Some(value.as_bytes().to_vec()),
            None,
            "in".into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            0,
            headers,
        )
    }

    #[test]
    fn routes_by_tenant_and_key_state() {
        let c = config();
        let known = c.tenants.keys().next().unwrap().clone();
        let json = format!(r#"{{"tenant_id":"{known}","body":"x"}}"#);
        let none = Revoked::new();
        assert_eq!(
            route(&msg(&json, None), &c, &none),
            Route::Archive(known.clone())
        );
        assert!(matches!(
            route(&msg(r#"{"tenant_id":"nobody"}"#, None), &c, &none),
            Route::Quarantine {
                reason: QuarantineReason::UnknownTenant,
                ..
            }
        ));
        assert!(matches!(
            route(&msg(r#"{"a":[}"#, None), &c, &none),
            Route::Quarantine {
                reason: QuarantineReason::Malformed,
                tenant: None,
                ..
            }
        ));
        // a header and a body that disagree: ambiguous, so malformed (never either's tenant)
        assert!(matches!(
            route(
                &msg(r#"{"tenant_id":"nobody"}"#, Some(known.as_str())),
                &c,
                &none
            ),
            Route::Quarantine {
                reason: QuarantineReason::Malformed,
                tenant: None,
                ..
            }
        ));
        assert_eq!(
            route(&msg(r#"{"body":"b"}"#, Some(known.as_str())), &c, &none),
            Route::Archive(known.clone())
        );
        let mut revoked = Revoked::new();
        revoked.insert(
            known.to_string(),
            (QuarantineReason::KeyDisabled, "disabled".into(), None),
        );
        // revoked and no public key ever seen: held (never straight to the operator's key)
        let r = route(&msg(&json, None), &c, &revoked);
        assert!(
            matches!(&r, Route::Hold { tenant, .. } if *tenant == known),
            "{r:?}"
        );
        assert_eq!(r.owner(), known.as_str());
    }

    #[test]
    fn held_records_wait_until_the_hold_is_over_then_go_to_the_operators_key() {
        let c = config();
        let known = c.tenants.keys().next().unwrap().clone();
        let views = KeyViews::default();
        let limit = std::time::Duration::from_millis(300);
        views.holds.set_limit(limit);
        let hold = || Route::Hold {
            tenant: known.clone(),
            detail: "key-disabled: disabled".into(),
        };
        let mut routes = vec![Route::Archive(known.clone()), hold(), hold()];
        match settle_holds(&mut routes, &views, limit) {
            Err(StageError::Waiting { tenants, held, .. }) => {
                assert_eq!(tenants, vec![known.to_string()]);
                assert_eq!(held, vec![(1, known.to_string()), (2, known.to_string())]);
            }
            other => panic!("{other:?}"),
        }
        std::thread::sleep(limit + std::time::Duration::from_millis(50));
        let mut routes = vec![hold()];
        assert!(settle_holds(&mut routes, &views, limit).unwrap());
        match &routes[0] {
            Route::Quarantine {
                reason: QuarantineReason::KeyUnknown,
                tenant: Some(t),
                detail,
            } => {
                assert_eq!(t, known.as_str());
                assert!(detail.contains("last resort"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        // once over, the tenant's archive routes go the same way while no public key is known
        let mut routes = vec![Route::Archive(known.clone())];
        assert!(settle_holds(&mut routes, &views, limit).unwrap());
        assert!(matches!(
            routes[0],
            Route::Quarantine {
                reason: QuarantineReason::VaultUnavailable,
                ..
            }
        ));
        // a DEK made for it ends the hold
        views.holds.release(known.as_str());
        let mut routes = vec![Route::Archive(known.clone())];
        assert!(!settle_holds(&mut routes, &views, limit).unwrap());
        assert_eq!(routes[0], Route::Archive(known));
    }

    #[test]
    fn a_tenant_string_that_is_not_an_id_is_never_echoed() {
        let c = config();
        let long = "x".repeat(10_000);
        for claimed in [long.as_str(), "bad tenant\r\nX-Injected: 1", "_quarantine"] {
            let r = route(&msg(r#"{"body":"b"}"#, Some(claimed)), &c, &Revoked::new());
            match r {
                Route::Quarantine {
                    reason: QuarantineReason::UnknownTenant,
                    tenant: None,
                    detail,
                } => assert!(!detail.contains(claimed), "{detail}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn groups_indices_by_owner_in_batch_order() {
        let c = config();
        let known = c.tenants.keys().next().unwrap().clone();
        let json = format!(r#"{{"tenant_id":"{known}"}}"#);
        let batch = vec![msg(&json, None), msg("junk", None), msg(&json, None)];
        let (routes, groups) = route_all(&batch, &c, &Revoked::new());
        assert_eq!(routes.len(), 3);
        assert_eq!(groups[known.as_str()], vec![0, 2]);
        assert_eq!(groups[QUARANTINE_TENANT], vec![1]);
    }
}
