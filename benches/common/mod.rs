//! The load harness's and the batch bench's baseline: a plaintext pass-through through the
//! worker's loop (the same [`Stage`] interface as the sealer), with the same routing, batching,
//! record building and producing, and no sealing. It lives here, with the benches: `byok run`
//! cannot reach it.

#![allow(dead_code)]

use std::sync::Arc;

use byok::config::Config;
use byok::envelope::headers::SourceRef;
use byok::lifecycle::monitor::Revoked;
use byok::pipeline::route::{HeaderCache, route};
use byok::pipeline::{Out, Stage, StageError};
use bytes::Bytes;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;

/// The output records of a batch, values copied unchanged, with the tenant and source headers.
pub(crate) fn pass_through(
    batch: &[OwnedMessage],
    config: &Config,
    cache: &mut HeaderCache,
) -> Vec<Out> {
    let none = Revoked::new();
    batch
        .iter()
        .map(|m| {
            let (topic, tenant) = cache.owner(&route(m, config, &none), config);
            let src = SourceRef::format(m.topic(), m.partition(), m.offset());
            Out {
                topic,
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                headers: vec![("byok.tenant", tenant), ("byok.src", Bytes::from(src))],
            }
        })
        .collect()
}

/// The pass-through as a stage of the worker's loop.
pub(crate) struct PassThrough {
    pub(crate) config: Config,
    pub(crate) cache: HeaderCache,
}

#[async_trait::async_trait]
impl Stage for PassThrough {
    async fn process(&mut self, batch: &Arc<Vec<OwnedMessage>>) -> Result<Vec<Out>, StageError> {
        Ok(pass_through(batch, &self.config, &mut self.cache))
    }
}
