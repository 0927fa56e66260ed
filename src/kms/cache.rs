//! A bounded cache of unwrapped DEKs with single-flight: a DEK is unwrapped once per process
//! however many records or threads ask for it at once; entries expire after a TTL and the
//! oldest are evicted past the bound. Evicted keys are zeroized when their last user drops them
//! (`DataKey` wipes itself).
//!
//! It must never hand out a DEK whose unwrap failed, nor keep one past its TTL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::OnceCell;

use super::{KekId, KeyProvider, KeyState, KmsError, Wrapped};
use crate::dek::{DataKey, DekId};

struct Entry {
    key: Arc<DataKey>,
    /// Milliseconds since the cache's epoch of the last use.
    last_used: AtomicU64,
}

type Flight = Arc<OnceCell<Result<Arc<DataKey>, KmsError>>>;

/// Caches `unwrap` results of the provider it wraps.
pub struct CachingProvider<P> {
    inner: P,
    entries: DashMap<DekId, Entry>,
    inflight: DashMap<DekId, Flight>,
    max_entries: usize,
    ttl: Duration,
    epoch: Instant,
}

impl<P> std::fmt::Debug for CachingProvider<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingProvider")
            .field("entries", &self.entries.len())
            .field("max_entries", &self.max_entries)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<P: KeyProvider> CachingProvider<P> {
    /// A cache of at most `max_entries` DEKs, each kept `ttl` after its last use.
    pub fn new(inner: P, max_entries: usize, ttl: Duration) -> Self {
        Self {
            inner,
            entries: DashMap::new(),
            inflight: DashMap::new(),
            max_entries: max_entries.max(1),
            ttl,
            epoch: Instant::now(),
        }
    }

    /// The provider this cache wraps.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// DEKs held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every cached DEK (a revoked tenant's plaintext DEKs leave memory).
    pub fn clear(&self) {
        self.entries.clear();
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn fresh(&self, e: &Entry, now: u64) -> bool {
        now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < self.ttl.as_millis() as u64
    }

    fn insert(&self, dek: DekId, key: Arc<DataKey>) {
        let now = self.now_ms();
        if self.entries.len() >= self.max_entries {
            self.entries.retain(|_, e| self.fresh(e, now));
        }
        if self.entries.len() >= self.max_entries {
            // Still full: evict the least recently used tenth.
            let mut ages: Vec<(u64, DekId)> = self
                .entries
                .iter()
                .map(|e| (e.last_used.load(Ordering::Relaxed), *e.key()))
                .collect();
            ages.sort_unstable();
            for (_, id) in ages.into_iter().take((self.max_entries / 10).max(1)) {
                self.entries.remove(&id);
            }
        }
        self.entries.insert(
            dek,
            Entry {
                key,
                last_used: AtomicU64::new(now),
            },
        );
    }
}

impl<P: KeyProvider> KeyProvider for CachingProvider<P> {
    fn tenant(&self) -> &str {
        self.inner.tenant()
    }

    async fn wrap(&self, dek: &DataKey) -> Result<Wrapped, KmsError> {
        self.inner.wrap(dek).await
    }

    async fn unwrap(
        &self,
        kek: &KekId,
        dek: DekId,
        wrapped: &[u8],
    ) -> Result<Arc<DataKey>, KmsError> {
        let now = self.now_ms();
        if let Some(e) = self.entries.get(&dek)
            && self.fresh(&e, now)
        {
            e.last_used.store(now, Ordering::Relaxed);
            metrics::counter!("byok_dek_cache_total", "tenant" => self.tenant().to_owned(), "result" => "hit").increment(1);
            return Ok(Arc::clone(&e.key));
        }
        self.entries.remove_if(&dek, |_, e| !self.fresh(e, now));
        metrics::counter!("byok_dek_cache_total", "tenant" => self.tenant().to_owned(), "result" => "miss").increment(1);
        let flight: Flight = Arc::clone(self.inflight.entry(dek).or_default().value());
        let result = flight
            .get_or_init(|| self.inner.unwrap(kek, dek, wrapped))
            .await
            .clone();
        self.inflight
            .remove_if(&dek, |_, f| Arc::ptr_eq(f, &flight));
        if let Ok(key) = &result
            && !self.entries.contains_key(&dek)
        {
            self.insert(dek, Arc::clone(key));
        }
        result
    }

    async fn key_state(&self) -> KeyState {
        self.inner.key_state().await
    }
}
