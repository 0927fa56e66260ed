//! Retries with jitter that honour `Retry-After`, and a per-vault rate limit kept below Key
//! Vault's own budget, as a decorator of any [`KeyProvider`]. Only outages are retried; a
//! revoked key is an answer, not a failure.
//!
//! It must never retry a revocation, nor exceed the vault's budget to retry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Mutex;

use super::{KekId, KeyProvider, KeyState, KmsError, Wrapped};
use crate::dek::{DataKey, DekId};

/// A token bucket: `per_10s` requests per 10 s, bursting up to `per_10s / 2`.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter for one vault.
    pub fn new(per_10s: u32) -> Self {
        let per_10s = f64::from(per_10s.max(1));
        let burst = (per_10s / 2.0).max(1.0);
        Self {
            per_second: per_10s / 10.0,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a request slot if one is free now; otherwise says how long until one is.
    pub async fn try_acquire(&self) -> Result<(), Duration> {
        let mut s = self.state.lock().await;
        let now = Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.per_second;
        s.0 = (s.0 + refill).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.0) / self.per_second))
        }
    }

    /// Waits for a request slot.
    pub async fn acquire(&self) {
        while let Err(wait) = self.try_acquire().await {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Retry policy.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// First backoff; doubles per attempt, with full jitter.
    pub base: Duration,
    /// Longest single wait (also caps `Retry-After`).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self.base.saturating_mul(1 << attempt.min(16));
        let jittered =
            Duration::from_secs_f64(rand::thread_rng().gen_range(0.0..=exp.as_secs_f64()));
        retry_after
            .map_or(jittered, |ra| ra.max(jittered))
            .min(self.max_delay)
    }
}

/// Runs `$call` under the vault's rate limit, retrying while its result matches `$outage`
/// (which binds the service's Retry-After as `$ra`), up to the policy's attempts.
macro_rules! limited_retry {
    ($self:ident, $call:expr, $outage:pat => $ra:ident) => {{
        let mut attempt = 0;
        loop {
            $self.limiter.acquire().await;
            match $call {
                $outage if attempt + 1 < $self.policy.attempts => {
                    $self.cool_down($ra);
                    tokio::time::sleep($self.policy.delay(attempt, $ra)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }};
}

/// Rate-limits and retries the provider it wraps.
#[derive(Debug)]
pub struct Resilient<P> {
    inner: P,
    limiter: Arc<RateLimiter>,
    policy: RetryPolicy,
    /// No call before this (the vault's last Retry-After), for [`Resilient::wrap_once`].
    not_before: std::sync::Mutex<Option<Instant>>,
}

impl<P: KeyProvider> Resilient<P> {
    /// Wraps `inner`, sharing `limiter` with the other tenants of the same vault.
    pub fn new(inner: P, limiter: Arc<RateLimiter>, policy: RetryPolicy) -> Self {
        Self {
            inner,
            limiter,
            policy,
            not_before: std::sync::Mutex::new(None),
        }
    }

    fn cool_down(&self, retry_after: Option<Duration>) {
        if let Some(ra) = retry_after {
            // a poisoned lock holds a plain Option<Instant>: taken over, never skipped
            let mut nb = self
                .not_before
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let until = Instant::now() + ra.min(self.policy.max_delay);
            *nb = Some(nb.map_or(until, |t| t.max(until)));
        }
    }

    /// One wrap attempt that never waits: refused at once (as unavailable) while the vault's
    /// last Retry-After runs or the request budget toward the vault is spent. For callers with
    /// a fallback (a DEK wrapped locally with the tenant's public key) that must not hold up
    /// other work waiting for a slow vault.
    pub async fn wrap_once(&self, dek: &DataKey) -> Result<Wrapped, KmsError> {
        let unavailable = |detail: String, wait: Duration| KmsError::Unavailable {
            tenant: self.inner.tenant().to_owned(),
            why: super::Outage::Throttled,
            detail,
            retry_after: Some(wait),
        };
        let cooling = self
            .not_before
            .lock()
            .map_or_else(|p| *p.into_inner(), |nb| *nb)
            .and_then(|t| t.checked_duration_since(Instant::now()));
        if let Some(wait) = cooling {
            return Err(unavailable(
                format!(
                    "the vault asked to wait {} ms more (Retry-After)",
                    wait.as_millis()
                ),
                wait,
            ));
        }
        if let Err(wait) = self.limiter.try_acquire().await {
            return Err(unavailable(
                format!(
                    "the request budget toward this vault (keys.vault_requests_per_10s) is spent for {} ms",
                    wait.as_millis()
                ),
                wait,
            ));
        }
        let r = self.inner.wrap(dek).await;
        if let Err(KmsError::Unavailable { retry_after, .. }) = &r {
            self.cool_down(*retry_after);
        }
        r
    }

    /// The provider this wraps.
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

impl<P: KeyProvider> KeyProvider for Resilient<P> {
    fn tenant(&self) -> &str {
        self.inner.tenant()
    }

    async fn wrap(&self, dek: &DataKey) -> Result<Wrapped, KmsError> {
        limited_retry!(self, self.inner.wrap(dek).await, Err(KmsError::Unavailable { retry_after, .. }) => retry_after)
    }

    async fn unwrap(
        &self,
        kek: &KekId,
        dek: DekId,
        wrapped: &[u8],
    ) -> Result<Arc<DataKey>, KmsError> {
        limited_retry!(self, self.inner.unwrap(kek, dek, wrapped).await, Err(KmsError::Unavailable { retry_after, .. }) => retry_after)
    }

    async fn key_state(&self) -> KeyState {
        limited_retry!(self, self.inner.key_state().await, KeyState::Unavailable { retry_after, .. } => retry_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bucket_spaces_requests_past_the_burst() {
        let l = RateLimiter::new(100); // 10/s, burst 50
        let t = Instant::now();
        for _ in 0..52 {
            l.acquire().await;
        }
        // two requests past the burst wait about 0.1 s each
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
    }

    /// A vault that answers 429 with Retry-After 5 s to every wrap, counting calls.
    #[derive(Debug, Default)]
    struct Throttled(std::sync::atomic::AtomicU32);

    impl KeyProvider for Throttled {
        fn tenant(&self) -> &str {
            "acme"
        }
        async fn wrap(&self, _dek: &DataKey) -> Result<Wrapped, KmsError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(KmsError::Unavailable {
                tenant: "acme".into(),
                why: super::super::Outage::Throttled,
                detail: "429".into(),
                retry_after: Some(Duration::from_secs(5)),
            })
        }
        async fn unwrap(
            &self,
            _kek: &KekId,
            _dek: DekId,
            _wrapped: &[u8],
        ) -> Result<Arc<DataKey>, KmsError> {
            unreachable!("not used")
        }
        async fn key_state(&self) -> KeyState {
            unreachable!("not used")
        }
    }

    #[tokio::test]
    async fn wrap_once_never_waits_and_honours_retry_after_without_calling() {
        let r = Resilient::new(
            Throttled::default(),
            Arc::new(RateLimiter::new(100)),
            RetryPolicy::default(),
        );
        let dek = DataKey::from_bytes_for_vectors(DekId::new_v7(), [7; 32]);
        let t = Instant::now();
        for _ in 0..5 {
            assert!(matches!(
                r.wrap_once(&dek).await,
                Err(KmsError::Unavailable { .. })
            ));
        }
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // the first 429 said 5 s: the next four were refused without a call
        assert_eq!(r.inner().0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn wrap_once_refuses_when_the_budget_is_spent() {
        let r = Resilient::new(
            Throttled::default(),
            Arc::new(RateLimiter::new(2)), // burst of 1
            RetryPolicy::default(),
        );
        r.limiter.acquire().await;
        let dek = DataKey::from_bytes_for_vectors(DekId::new_v7(), [7; 32]);
        match r.wrap_once(&dek).await {
            Err(KmsError::Unavailable { detail, .. }) => {
                assert!(detail.contains("vault_requests_per_10s"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.inner().0.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = RetryPolicy::default();
        assert!(p.delay(0, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        assert_eq!(p.delay(0, Some(Duration::from_secs(600))), p.max_delay);
        assert!(p.delay(3, None) <= Duration::from_millis(1600));
    }
}
