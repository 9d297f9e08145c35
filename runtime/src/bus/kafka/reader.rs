//! Reads partitions of a topic from their beginning to their end *now*, without a consumer
//! group: how the deduplication window ([`super::dedupe`]) and the source state
//! ([`super::state`]) are rebuilt from their compacted topics.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
};

/// One record read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Key, if any.
    pub key: Option<Vec<u8>>,
    /// Value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Every record of `partitions` of `topic` (all of them when `None`) up to the end each had
/// when the read began, in offset order per partition. Blocking: call it off the async workers.
/// Fails (naming the topic) when the broker does not answer or the end is not reached within
/// `timeout`.
pub fn read_to_end(
    config: &ClientConfig,
    topic: &str,
    partitions: Option<&[i32]>,
    timeout: Duration,
) -> Result<Vec<Record>, String> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut config = config.clone();
    config
        // No group membership and no commits: `assign` only. librdkafka wants an id anyway.
        .set("group.id", "inputbot-state-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("allow.auto.create.topics", "false");
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| format!("cannot create a reader of {topic}: {e}"))?;
    let wanted: Vec<i32> = match partitions {
        Some(p) => p.to_vec(),
        None => {
            let metadata = consumer
                .fetch_metadata(Some(topic), left())
                .map_err(|e| format!("cannot read the metadata of {topic}: {e}"))?;
            let found: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if found.is_empty() {
                return Err(format!(
                    "topic {topic} does not exist (the operator creates it)"
                ));
            }
            found
        }
    };
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &wanted {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, left())
            .map_err(|e| format!("cannot read the offsets of {topic}/{p}: {e}"))?;
        if high > low {
            ends.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Offset(low))
                .map_err(|e| format!("{topic}/{p}: {e}"))?;
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| format!("cannot read {topic}: {e}"))?;
    while !ends.is_empty() {
        if left().is_zero() {
            return Err(format!(
                "could not read {topic} to its end within {timeout:?} ({} partition(s) left)",
                ends.len()
            ));
        }
        let Some(m) = consumer.poll(left().min(Duration::from_millis(500))) else {
            continue;
        };
        let m = m.map_err(|e| format!("reading {topic}: {e}"))?;
        let partition = m.partition();
        let Some(end) = ends.get(&partition).copied() else {
            continue;
        };
        if m.offset() < end {
            out.push(Record {
                partition,
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
            });
        }
        // Compaction may have removed the last offsets: the end is reached once a record at
        // or past `end - 1` arrives, or the position passed it.
        let position = consumer
            .position()
            .ok()
            .and_then(|tpl| {
                tpl.find_partition(topic, partition)
                    .and_then(|e| e.offset().to_raw())
            })
            .unwrap_or(m.offset() + 1);
        if m.offset() + 1 >= end || position >= end {
            ends.remove(&partition);
        }
    }
    Ok(out)
}
