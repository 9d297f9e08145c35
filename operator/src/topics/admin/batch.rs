//! Topic creation in batches. A Kafka controller commits each CreateTopics request on its own,
//! so its rate is requests per second, not topics: on the 2-core test machine one topic per
//! request reaches about 20 topics/s, five per request about 110, a hundred per request about
//! 1,000. Reconciles running side by side therefore hand their missing topics to one task that
//! sends them together:
//!
//! ```text
//!  reconcile A ─┐                        ┌─▶ A's topics' results
//!  reconcile B ─┼─▶ queue ─▶ batcher ─▶ one CreateTopics (≤ MAX_BATCH topics) ─┼─▶ B's
//!  reconcile C ─┘   (whatever waits while the previous request is in flight)   └─▶ C's
//! ```
//!
//! Nothing lingers: a lone request goes out at once, and the batch grows only with what queued
//! up while the previous one was at the broker (group commit). A topic asked for twice in one
//! batch is sent once and both askers get its result.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::{mpsc, oneshot};

use crate::topics::TopicRequest;

/// Most topics in one CreateTopics request.
pub const MAX_BATCH: usize = 500;

/// Why a whole request failed (every topic in it failed alike).
#[derive(Clone, Debug)]
pub enum BatchFailure {
    /// The client or the broker refused the request.
    Kafka(KafkaError),
    /// No answer within the timeout (plus grace).
    TimedOut,
    /// The batcher is gone (the provisioner is being dropped).
    Closed,
}

/// Each requested topic with the broker's verdict: `None` created, `Some(code)` refused.
pub type Created = Vec<(String, Option<RDKafkaErrorCode>)>;

struct Job {
    topics: Vec<TopicRequest>,
    reply: oneshot::Sender<Result<Created, BatchFailure>>,
}

/// The handle reconciles use; the task behind it ends when the last handle is dropped.
pub struct Batcher {
    jobs: mpsc::UnboundedSender<Job>,
    requests: Arc<AtomicU64>,
}

impl Batcher {
    /// Starts the batching task on the current tokio runtime.
    pub fn start(
        client: Arc<AdminClient<DefaultClientContext>>,
        options: AdminOptions,
        timeout: Duration,
    ) -> Batcher {
        let (jobs, queue) = mpsc::unbounded_channel();
        let requests = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(client, options, timeout, queue, requests.clone()));
        Batcher { jobs, requests }
    }

    /// Creates `topics` in the next batch; returns the broker's verdict per topic, in order.
    pub async fn create(&self, topics: Vec<TopicRequest>) -> Result<Created, BatchFailure> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { topics, reply })
            .map_err(|_| BatchFailure::Closed)?;
        answer.await.map_err(|_| BatchFailure::Closed)?
    }

    /// CreateTopics requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

async fn run(
    client: Arc<AdminClient<DefaultClientContext>>,
    options: AdminOptions,
    timeout: Duration,
    mut queue: mpsc::UnboundedReceiver<Job>,
    requests: Arc<AtomicU64>,
) {
    while let Some(first) = queue.recv().await {
        let mut count = first.topics.len();
        let mut batch = vec![first];
        while count < MAX_BATCH {
            let Ok(job) = queue.try_recv() else { break };
            count += job.topics.len();
            batch.push(job);
        }
        let mut seen = HashSet::new();
        let new_topics: Vec<NewTopic<'_>> = batch
            .iter()
            .flat_map(|job| &job.topics)
            .filter(|t| seen.insert(t.name.as_str()))
            .map(new_topic)
            .collect();
        requests.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            topics = new_topics.len(),
            askers = batch.len(),
            "creating Kafka topics in one request"
        );
        let sent = client.create_topics(&new_topics, &options);
        let answer = match tokio::time::timeout(timeout + super::GRACE, sent).await {
            Ok(Ok(results)) => Ok(results
                .into_iter()
                .map(|r| match r {
                    Ok(name) => (name, None),
                    Err((name, code)) => (name, Some(code)),
                })
                .collect::<HashMap<_, _>>()),
            Ok(Err(e)) => Err(BatchFailure::Kafka(e)),
            Err(_) => Err(BatchFailure::TimedOut),
        };
        drop(new_topics);
        for job in batch {
            let reply = match &answer {
                Err(failure) => Err(failure.clone()),
                Ok(verdicts) => Ok(job
                    .topics
                    .iter()
                    .map(|t| {
                        // A topic the broker did not mention was not created: say so rather
                        // than report success.
                        let verdict = verdicts
                            .get(&t.name)
                            .copied()
                            .unwrap_or(Some(RDKafkaErrorCode::UnknownTopicOrPartition));
                        (t.name.clone(), verdict)
                    })
                    .collect()),
            };
            // The asker may have given up (its reconcile was cancelled): nothing to tell.
            let _ = job.reply.send(reply);
        }
    }
}

fn new_topic(r: &TopicRequest) -> NewTopic<'_> {
    r.config.iter().fold(
        NewTopic::new(
            &r.name,
            r.partitions,
            TopicReplication::Fixed(i32::from(r.replication_factor)),
        ),
        |t, (k, v)| t.set(k, v),
    )
}
