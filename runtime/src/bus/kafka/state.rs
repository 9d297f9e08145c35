//! Source state in the bot's compacted state topic (`inputbot.<ns>.<bot>.state`): one record
//! per source, keyed `<source>.<kind>`, the newest winning. The poller reads the whole topic
//! once when it starts and writes a source's record (acks=all) whenever the source's state
//! changes, so a restarted or moved poller pod resumes where the last one stopped.
//!
//! Only one poller runs at a time (the operator renders a single-replica `Recreate`
//! Deployment), so the store never has two writers of one key.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use rdkafka::{producer::FutureRecord, util::Timeout};

use super::{KafkaBus, reader};
use crate::sources::state::StateStore;

/// How long reading the state topic at start may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The state topic of one bot, as loaded at start plus what was saved since.
pub struct KafkaStateStore {
    bus: Arc<KafkaBus>,
    topic: String,
    loaded: std::sync::Mutex<HashMap<String, Vec<u8>>>,
}

impl std::fmt::Debug for KafkaStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStateStore")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaStateStore {
    /// Reads `topic` to its end (the newest record of each key wins; a tombstone removes it).
    pub async fn open(bus: Arc<KafkaBus>, topic: &str) -> Result<Arc<Self>, String> {
        bus.require(&[topic]);
        let config = bus.settings().client_config();
        let name = topic.to_owned();
        let records = tokio::task::spawn_blocking(move || {
            reader::read_to_end(&config, &name, None, LOAD_TIMEOUT)
        })
        .await
        .map_err(|e| format!("the state reader failed: {e}"))??;
        let mut loaded = HashMap::new();
        for r in records {
            let Some(key) = r.key.and_then(|k| String::from_utf8(k).ok()) else {
                continue;
            };
            match r.value {
                Some(v) => loaded.insert(key, v),
                None => loaded.remove(&key),
            };
        }
        tracing::info!(target: "inputbot::bus", topic, sources = loaded.len(), "source state loaded");
        Ok(Arc::new(Self {
            bus,
            topic: topic.to_owned(),
            loaded: std::sync::Mutex::new(loaded),
        }))
    }
}

impl StateStore for KafkaStateStore {
    fn load(&self, key: &str) -> Option<Vec<u8>> {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn save<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let record = FutureRecord::to(&self.topic).key(key).payload(&bytes);
            self.bus
                .producer()
                .send(record, Timeout::After(Duration::from_secs(5)))
                .await
                .map_err(|(e, _)| format!("cannot write to {}: {e}", self.topic))?;
            self.loaded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.to_owned(), bytes);
            Ok(())
        })
    }

    fn describe(&self, key: &str) -> String {
        format!("topic {} key {key}", self.topic)
    }
}
