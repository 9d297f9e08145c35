//! Topic metadata reads, shared. Asking librdkafka about one topic by name
//! (`fetch_metadata(Some(topic))`) makes it create a topic handle with its partitions and
//! queues, and the client keeps those until it is destroyed: 5,000 topics' worth at 1,000
//! bots; at 300 bots about 7 MB of a 23 MB heap (`docs/benchmarks.md`, run 10). A request for every
//! topic's metadata creates no handle; one such request answers every reconcile waiting
//! meanwhile:
//!
//! ```text
//!  ensure A (3 topics) ─┐                                       ┌─▶ A's topics, found or missing
//!  ensure B (5 topics) ─┼─▶ queue ─▶ reader ─▶ one Metadata request (all topics) ─┼─▶ B's
//!  ensure C (1 topic)  ─┘   (whatever waits while the previous request is out)    └─▶ C's
//! ```
//!
//! A read never sees a broker state older than its own request: what queues while a request
//! is out goes into the next one (so a reconcile reading back a topic it just created asks
//! after its create). The blocking librdkafka call runs on the blocking pool, one at a time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::{mpsc, oneshot};

use super::Found;

/// Why a read failed (every asker of that request alike).
#[derive(Clone, Debug)]
pub enum ReadFailure {
    /// The client or the broker refused or failed the request.
    Kafka(KafkaError),
    /// No answer within the timeout (plus grace).
    TimedOut,
    /// The blocking call did not complete (it panicked or the runtime is shutting down).
    Lost(String),
    /// The reader is gone (the provisioner is being dropped).
    Closed,
}

struct Job {
    topics: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Found>, ReadFailure>>,
}

/// The handle reconciles use; the task behind it ends when the last handle is dropped.
pub struct MetadataReader {
    jobs: mpsc::UnboundedSender<Job>,
}

impl MetadataReader {
    /// Starts the reading task on the current tokio runtime.
    pub fn start(
        client: Arc<AdminClient<DefaultClientContext>>,
        timeout: Duration,
    ) -> MetadataReader {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(client, timeout, queue));
        MetadataReader { jobs }
    }

    /// What the broker says about each of `topics`, in order, from a request sent after this
    /// call.
    pub async fn describe(&self, topics: Vec<String>) -> Result<Vec<Found>, ReadFailure> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { topics, reply })
            .map_err(|_| ReadFailure::Closed)?;
        answer.await.map_err(|_| ReadFailure::Closed)?
    }
}

async fn run(
    client: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
    mut queue: mpsc::UnboundedReceiver<Job>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while let Ok(job) = queue.try_recv() {
            batch.push(job);
        }
        let wanted: HashSet<String> = batch
            .iter()
            .flat_map(|job| job.topics.iter().cloned())
            .collect();
        tracing::debug!(
            topics = wanted.len(),
            askers = batch.len(),
            "reading Kafka topic metadata in one request"
        );
        let answer = read(Arc::clone(&client), timeout, wanted)
            .await
            .map(|found| found.into_iter().collect::<HashMap<_, _>>());
        for job in batch {
            let reply = match &answer {
                Err(failure) => Err(failure.clone()),
                Ok(found) => Ok(job
                    .topics
                    .iter()
                    .map(|t| found.get(t).cloned().unwrap_or(Found::Missing))
                    .collect()),
            };
            // The asker may have given up (its reconcile was cancelled): nothing to tell.
            let _ = job.reply.send(reply);
        }
    }
}

/// One all-topics Metadata request; returns what it says about the `wanted` topics that
/// exist (a topic it does not list is missing).
async fn read(
    client: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
    wanted: HashSet<String>,
) -> Result<Vec<(String, Found)>, ReadFailure> {
    let task = tokio::task::spawn_blocking(move || {
        let metadata = client.inner().fetch_metadata(None, timeout)?;
        Ok::<_, KafkaError>(
            metadata
                .topics()
                .iter()
                .filter(|t| wanted.contains(t.name()))
                .map(|t| {
                    let partitions = t.partitions();
                    let found = Found::from_metadata(
                        t.error().map(RDKafkaErrorCode::from),
                        partitions.len(),
                        partitions.first().map(|p| p.replicas().len()),
                    );
                    (t.name().to_string(), found)
                })
                .collect(),
        )
    });
    match tokio::time::timeout(timeout + super::GRACE, task).await {
        Err(_) => Err(ReadFailure::TimedOut),
        Ok(Err(join)) => Err(ReadFailure::Lost(join.to_string())),
        Ok(Ok(Err(e))) => Err(ReadFailure::Kafka(e)),
        Ok(Ok(Ok(found))) => Ok(found),
    }
}
