//! Topic provisioning through the Kafka Admin API.
//!
//! ```text
//!  ensure(requests)
//!    1. metadata of each requested topic   (read)   → missing | partitions + replication factor
//!       (one all-topics request shared with the other reconciles waiting meanwhile: [`metadata`])
//!    2. create the missing ones            (write)  "already exists" races → treated as existing
//!       (in one request with those of other reconciles running meanwhile: [`batch`])
//!    3. grow partitions that are too few   (write)  never shrink: a topic with more is reported
//!    4. describe configs, alter the differing ones  (read, then a write only on a difference)
//! ```
//!
//! A no-op `ensure` sends reads only. Every call is bounded by the provisioner's timeout: the
//! blocking metadata call runs on the blocking pool, the admin futures are wrapped in
//! [`tokio::time::timeout`], and the admin requests carry the same request and operation
//! timeouts, so nothing here hangs on an unreachable broker.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigResource, ConfigSource, NewPartitions,
    OwnedResourceSpecifier, ResourceSpecifier,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};

use super::{TopicError, TopicOutcome, TopicOwner, TopicProvisioner, TopicRequest};

mod batch;
mod metadata;

use batch::{BatchFailure, Batcher};
use metadata::{MetadataReader, ReadFailure};

/// The timeout of one admin request when the caller has no opinion.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra time granted to a request beyond its own timeout before we stop waiting for it
/// (librdkafka reports its own timeout first; this only guards against a stuck client).
const GRACE: Duration = Duration::from_secs(5);

/// Provisions topics with the Kafka Admin API (`admin` mode).
pub struct AdminProvisioner {
    // Behind an `Arc`: the batcher and the metadata reader hold it too.
    client: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
    /// Creates topics in batches; started on first use (it needs the tokio runtime).
    batcher: OnceLock<Batcher>,
    /// Reads topic metadata in shared all-topics requests; started on first use.
    reader: OnceLock<MetadataReader>,
}

/// How long the admin client keeps a topic's metadata (see [`AdminProvisioner::new`]).
pub const METADATA_MAX_AGE: Duration = Duration::from_secs(30);

impl AdminProvisioner {
    /// Builds the admin client from `config`, which carries `bootstrap.servers` and the
    /// security settings. `timeout` bounds every request (metadata, create, alter, delete);
    /// [`DEFAULT_TIMEOUT`] is a sensible value.
    ///
    /// Automatic topic creation is switched off for this client
    /// (`allow.auto.create.topics=false`): nothing this client asks may make a broker with
    /// `auto.create.topics.enable` create a topic with its defaults.
    ///
    /// librdkafka keeps the metadata of every topic it has seen for `metadata.max.age.ms`
    /// (15 minutes by default), and an all-topics read sees them all: at 1,000 bots, 5,000
    /// topics' worth. Each check asks the broker afresh and nothing reads the cache, so
    /// entries here live [`METADATA_MAX_AGE`] only.
    pub fn new(config: &ClientConfig, timeout: Duration) -> KafkaResult<AdminProvisioner> {
        let mut config = config.clone();
        config.set("allow.auto.create.topics", "false");
        config.set(
            "metadata.max.age.ms",
            METADATA_MAX_AGE.as_millis().to_string(),
        );
        if config.get("client.id").is_none() {
            config.set("client.id", "inputbot-operator");
        }
        let client = config.create()?;
        Ok(AdminProvisioner {
            client: Arc::new(client),
            timeout,
            batcher: OnceLock::new(),
            reader: OnceLock::new(),
        })
    }

    /// CreateTopics requests this provisioner has sent (many reconciles' topics share one).
    pub fn create_requests(&self) -> u64 {
        self.batcher.get().map_or(0, Batcher::requests)
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    /// Awaits one admin future, bounded by the timeout.
    async fn bounded<T>(
        &self,
        topic: &str,
        what: &str,
        request: impl Future<Output = KafkaResult<T>>,
    ) -> Result<T, TopicError> {
        match tokio::time::timeout(self.timeout + GRACE, request).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(kafka_error(topic, what, &e)),
            Err(_) => Err(timed_out(topic, what, self.timeout)),
        }
    }

    /// Reads the metadata of `topics`, in order (in the next shared request, [`metadata`]).
    async fn describe_all(&self, topics: Vec<String>) -> Result<Vec<Found>, TopicError> {
        let first = topics.first().cloned().unwrap_or_default();
        let reader = self
            .reader
            .get_or_init(|| MetadataReader::start(Arc::clone(&self.client), self.timeout));
        reader
            .describe(topics)
            .await
            .map_err(|failure| match failure {
                ReadFailure::Kafka(e) => kafka_error(&first, "metadata", &e),
                ReadFailure::TimedOut => timed_out(&first, "metadata", self.timeout),
                ReadFailure::Lost(why) => TopicError::Kafka {
                    topic: first.clone(),
                    message: format!("metadata request did not complete: {why}"),
                    permanent: false,
                },
                ReadFailure::Closed => TopicError::Kafka {
                    topic: first.clone(),
                    message: "metadata: the operator is shutting down".into(),
                    permanent: false,
                },
            })
    }

    /// Reads the metadata of one topic; a topic the broker answers with an error for is one.
    async fn describe(&self, topic: &str) -> Result<Found, TopicError> {
        let found = self.describe_all(vec![topic.to_string()]).await?;
        match found.into_iter().next() {
            Some(Found::Failed(code)) => Err(code_error(topic, "metadata", code)),
            Some(found) => Ok(found),
            None => Ok(Found::Missing),
        }
    }

    /// Creates the missing topics (in the next batch, [`batch`]). Returns the names that
    /// already existed (a race with another writer), which the caller then treats like
    /// existing topics.
    async fn create(&self, requests: &[&TopicRequest]) -> Result<Vec<String>, TopicError> {
        let Some(first) = requests.first() else {
            return Ok(Vec::new());
        };
        let batcher = self
            .batcher
            .get_or_init(|| Batcher::start(Arc::clone(&self.client), self.options(), self.timeout));
        let topics = requests.iter().map(|r| (*r).clone()).collect();
        let results = match batcher.create(topics).await {
            Ok(results) => results,
            Err(BatchFailure::Kafka(e)) => return Err(kafka_error(&first.name, "create", &e)),
            Err(BatchFailure::TimedOut) => {
                return Err(timed_out(&first.name, "create", self.timeout));
            }
            Err(BatchFailure::Closed) => {
                return Err(TopicError::Kafka {
                    topic: first.name.clone(),
                    message: "create: the operator is shutting down".into(),
                    permanent: false,
                });
            }
        };
        let mut raced = Vec::new();
        for (name, verdict) in results {
            match verdict {
                None => {}
                Some(RDKafkaErrorCode::TopicAlreadyExists) => raced.push(name),
                Some(code) => return Err(code_error(&name, "create", code)),
            }
        }
        Ok(raced)
    }

    /// Grows one topic to `partitions`. A concurrent grow that got there first is success.
    async fn grow(&self, topic: &str, partitions: i32) -> Result<(), TopicError> {
        let count = usize::try_from(partitions).unwrap_or(0);
        let new_partitions = [NewPartitions::new(topic, count)];
        let results = self
            .bounded(
                topic,
                "create partitions",
                self.client
                    .create_partitions(&new_partitions, &self.options()),
            )
            .await?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((name, RDKafkaErrorCode::InvalidPartitions)) => {
                    // Kafka says so when the topic has that many already (someone else grew
                    // it meanwhile) as well as when the count is refused: look again.
                    match self.describe(&name).await? {
                        Found::Present {
                            partitions: now, ..
                        } if now >= partitions => {}
                        _ => {
                            return Err(code_error(
                                &name,
                                "create partitions",
                                RDKafkaErrorCode::InvalidPartitions,
                            ));
                        }
                    }
                }
                Err((name, code)) => return Err(code_error(&name, "create partitions", code)),
            }
        }
        Ok(())
    }

    /// Applies the requested config of existing topics, writing only where a value differs.
    async fn apply_configs(&self, requests: &[&TopicRequest]) -> Result<(), TopicError> {
        let requests: Vec<&TopicRequest> = requests
            .iter()
            .copied()
            .filter(|r| !r.config.is_empty())
            .collect();
        let Some(first) = requests.first() else {
            return Ok(());
        };
        let specifiers: Vec<ResourceSpecifier<'_>> = requests
            .iter()
            .map(|r| ResourceSpecifier::Topic(&r.name))
            .collect();
        let described = self
            .bounded(
                &first.name,
                "describe configs",
                self.client.describe_configs(&specifiers, &self.options()),
            )
            .await?;
        let mut current: HashMap<String, ConfigResource> = HashMap::new();
        for (request, result) in requests.iter().zip(described) {
            match result {
                Ok(resource) => {
                    let name = match &resource.specifier {
                        OwnedResourceSpecifier::Topic(n) => n.clone(),
                        _ => request.name.clone(),
                    };
                    current.insert(name, resource);
                }
                Err(code) => return Err(code_error(&request.name, "describe configs", code)),
            }
        }
        // AlterConfigs replaces a topic's whole dynamic config: carry the values set by
        // others along, so that only the requested keys change.
        let mut merged: Vec<(&str, BTreeMap<String, String>)> = Vec::new();
        for request in &requests {
            let resource = current.get(&request.name);
            let kept = resource.map(dynamic_topic_config).unwrap_or_default();
            if let Some(entries) = config_to_write(&request.config, kept) {
                merged.push((&request.name, entries));
            }
        }
        let Some((first, _)) = merged.first() else {
            return Ok(());
        };
        let alters: Vec<AlterConfig<'_>> = merged
            .iter()
            .map(|(name, entries)| {
                entries.iter().fold(
                    AlterConfig::new(ResourceSpecifier::Topic(name)),
                    |a, (k, v)| a.set(k, v),
                )
            })
            .collect();
        let results = self
            .bounded(
                first,
                "alter configs",
                self.client.alter_configs(&alters, &self.options()),
            )
            .await?;
        for result in results {
            if let Err((specifier, code)) = result {
                let name = match specifier {
                    OwnedResourceSpecifier::Topic(n) => n,
                    other => format!("{other:?}"),
                };
                return Err(code_error(&name, "alter configs", code));
            }
        }
        Ok(())
    }
}

/// What the metadata says about one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Found {
    /// The broker does not know it.
    Missing,
    /// It exists.
    Present {
        /// Its partitions.
        partitions: i32,
        /// Replicas of its first partition (the replication factor), when it has partitions.
        replication_factor: Option<usize>,
        /// Some partition has no leader yet (just created, or a broker is down).
        leaderless: bool,
    },
    /// The broker answered with an error for it.
    Failed(RDKafkaErrorCode),
}

impl Found {
    fn from_metadata(
        error: Option<RDKafkaErrorCode>,
        partitions: usize,
        replicas: Option<usize>,
    ) -> Found {
        match error {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                Found::Missing
            }
            Some(code) if partitions == 0 => Found::Failed(code),
            error => Found::Present {
                partitions: i32::try_from(partitions).unwrap_or(i32::MAX),
                replication_factor: replicas,
                leaderless: error.is_some(),
            },
        }
    }
}

/// The dynamic (topic-level, explicitly set) config of a topic.
fn dynamic_topic_config(resource: &ConfigResource) -> BTreeMap<String, String> {
    resource
        .entries
        .iter()
        .filter(|e| e.source == ConfigSource::DynamicTopic && !e.is_read_only)
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

/// The full config to write to a topic whose dynamic config is `current`, or `None` when
/// every requested value is set already (then nothing is written).
fn config_to_write(
    requested: &BTreeMap<String, String>,
    current: BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    let differs = requested.iter().any(|(k, v)| current.get(k) != Some(v));
    if !differs {
        return None;
    }
    let mut entries = current;
    entries.extend(requested.iter().map(|(k, v)| (k.clone(), v.clone())));
    Some(entries)
}

/// The outcome for an existing topic, and whether it needs more partitions.
fn existing_outcome(request: &TopicRequest, found: &Found) -> (TopicOutcome, bool) {
    let Found::Present {
        partitions,
        replication_factor,
        leaderless,
    } = found
    else {
        unreachable!("existing_outcome is only called for present topics")
    };
    let mut notes = Vec::new();
    let grow = *partitions < request.partitions;
    if *partitions > request.partitions {
        notes.push(format!(
            "has {partitions} partitions, more than the {} requested; Kafka cannot shrink",
            request.partitions
        ));
    }
    if let Some(actual) = replication_factor
        && request.replication_factor > 0
        && *actual != request.replication_factor as usize
    {
        notes.push(format!(
            "has replication factor {actual}, not the {} requested; it is set at creation only",
            request.replication_factor
        ));
    }
    if *leaderless {
        notes.push("some partitions have no leader yet".to_string());
    }
    let outcome = TopicOutcome {
        name: request.name.clone(),
        partitions: Some((*partitions).max(request.partitions)),
        ready: !*leaderless,
        message: (!notes.is_empty()).then(|| notes.join("; ")),
    };
    (outcome, grow)
}

/// Whether an error code says that retrying the same request cannot succeed.
fn is_permanent_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::InvalidReplicationFactor
            | C::InvalidReplicaAssignment
            | C::InvalidPartitions
            | C::InvalidConfig
            | C::InvalidTopic
            | C::InvalidRequest
            | C::InvalidArgument
            | C::PolicyViolation
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::Authentication
            | C::SaslAuthenticationFailed
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState
            | C::UnsupportedVersion
            | C::TopicDeletionDisabled
            | C::SecurityDisabled
    )
}

/// Whether a client error says that retrying cannot succeed.
fn is_permanent(err: &KafkaError) -> bool {
    match err {
        KafkaError::AdminOp(code) | KafkaError::MetadataFetch(code) => is_permanent_code(*code),
        // The request could not even be built (bad name, bad option): same input, same result.
        KafkaError::AdminOpCreation(_) | KafkaError::ClientConfig(..) | KafkaError::Nul(_) => true,
        _ => false,
    }
}

fn kafka_error(topic: &str, what: &str, err: &KafkaError) -> TopicError {
    TopicError::Kafka {
        topic: topic.to_string(),
        message: format!("{what}: {err}"),
        permanent: is_permanent(err),
    }
}

fn code_error(topic: &str, what: &str, code: RDKafkaErrorCode) -> TopicError {
    TopicError::Kafka {
        topic: topic.to_string(),
        message: format!("{what}: {code} ({code:?})"),
        permanent: is_permanent_code(code),
    }
}

fn timed_out(topic: &str, what: &str, timeout: Duration) -> TopicError {
    TopicError::Kafka {
        topic: topic.to_string(),
        message: format!("{what}: no answer within {timeout:?}"),
        permanent: false,
    }
}

#[async_trait::async_trait]
impl TopicProvisioner for AdminProvisioner {
    fn mode(&self) -> &'static str {
        "admin"
    }

    async fn ensure(
        &self,
        owner: &TopicOwner,
        topics: &[TopicRequest],
    ) -> Result<Vec<TopicOutcome>, TopicError> {
        tracing::debug!(
            owner = %format_args!("{}/{}/{}", owner.kind, owner.namespace, owner.name),
            topics = topics.len(),
            "ensuring Kafka topics"
        );
        let found = self
            .describe_all(topics.iter().map(|t| t.name.clone()).collect())
            .await?;
        if let Some((t, Found::Failed(code))) = topics
            .iter()
            .zip(&found)
            .find(|(_, f)| matches!(f, Found::Failed(_)))
        {
            return Err(code_error(&t.name, "metadata", *code));
        }

        let missing: Vec<&TopicRequest> = topics
            .iter()
            .zip(&found)
            .filter(|(_, f)| **f == Found::Missing)
            .map(|(t, _)| t)
            .collect();
        let raced = self.create(&missing).await?;

        let mut outcomes = Vec::with_capacity(topics.len());
        let mut existing: Vec<&TopicRequest> = Vec::new();
        for (request, found) in topics.iter().zip(found) {
            let found = if found != Found::Missing {
                found
            } else if raced.contains(&request.name) {
                // Created by someone else between our read and our create.
                self.describe(&request.name).await?
            } else {
                tracing::info!(topic = %request.name, partitions = request.partitions, "created Kafka topic");
                outcomes.push(TopicOutcome {
                    name: request.name.clone(),
                    partitions: Some(request.partitions),
                    ready: true,
                    message: None,
                });
                continue;
            };
            if found == Found::Missing {
                return Err(TopicError::Kafka {
                    topic: request.name.clone(),
                    message: "the broker says the topic exists, then that it does not".into(),
                    permanent: false,
                });
            }
            let (outcome, grow) = existing_outcome(request, &found);
            if grow {
                self.grow(&request.name, request.partitions).await?;
                tracing::info!(topic = %request.name, partitions = request.partitions, "grew Kafka topic");
            }
            existing.push(request);
            outcomes.push(outcome);
        }
        self.apply_configs(&existing).await?;
        Ok(outcomes)
    }

    async fn delete(&self, owner: &TopicOwner, topics: &[String]) -> Result<(), TopicError> {
        let Some(first) = topics.first() else {
            return Ok(());
        };
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let results = self
            .bounded(
                first,
                "delete",
                self.client.delete_topics(&names, &self.options()),
            )
            .await?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(
                    topic = %name,
                    owner = %format_args!("{}/{}/{}", owner.kind, owner.namespace, owner.name),
                    "deleted Kafka topic"
                ),
                Err((
                    _,
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopicId,
                )) => {}
                Err((name, code)) => return Err(code_error(&name, "delete", code)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(partitions: i32, rf: i16) -> TopicRequest {
        TopicRequest {
            name: "inputbot.ns.bot.raw".into(),
            partitions,
            replication_factor: rf,
            config: BTreeMap::from([("retention.ms".into(), "604800000".into())]),
        }
    }

    fn present(partitions: i32, rf: usize) -> Found {
        Found::Present {
            partitions,
            replication_factor: Some(rf),
            leaderless: false,
        }
    }

    #[test]
    fn invalid_replication_factor_policy_and_authorization_are_permanent() {
        for code in [
            RDKafkaErrorCode::InvalidReplicationFactor,
            RDKafkaErrorCode::PolicyViolation,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
            RDKafkaErrorCode::InvalidConfig,
        ] {
            assert!(is_permanent_code(code), "{code:?}");
            assert!(is_permanent(&KafkaError::AdminOp(code)), "{code:?}");
            assert!(code_error("t", "create", code).is_permanent(), "{code:?}");
        }
    }

    #[test]
    fn unreachable_broker_and_timeouts_are_transient() {
        for code in [
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::OperationTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::BrokerNotAvailable,
            RDKafkaErrorCode::NotController,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::NetworkException,
        ] {
            assert!(!is_permanent_code(code), "{code:?}");
            assert!(!is_permanent(&KafkaError::MetadataFetch(code)), "{code:?}");
        }
        assert!(!is_permanent(&KafkaError::Canceled));
        assert!(!timed_out("t", "metadata", DEFAULT_TIMEOUT).is_permanent());
    }

    #[test]
    fn requests_that_cannot_be_built_are_permanent() {
        assert!(is_permanent(&KafkaError::AdminOpCreation("bad".into())));
    }

    #[test]
    fn unknown_topic_in_metadata_means_missing() {
        let found = Found::from_metadata(Some(RDKafkaErrorCode::UnknownTopicOrPartition), 0, None);
        assert_eq!(found, Found::Missing);
        assert_eq!(Found::from_metadata(None, 3, Some(1)), present(3, 1));
    }

    #[test]
    fn topic_error_without_partitions_is_a_failure_and_with_partitions_is_leaderless() {
        let code = RDKafkaErrorCode::TopicAuthorizationFailed;
        assert_eq!(
            Found::from_metadata(Some(code), 0, None),
            Found::Failed(code)
        );
        let found = Found::from_metadata(Some(RDKafkaErrorCode::LeaderNotAvailable), 2, Some(1));
        let (outcome, grow) = existing_outcome(&request(2, 1), &found);
        assert!(!grow);
        assert!(!outcome.ready);
        assert_eq!(
            outcome.message.as_deref(),
            Some("some partitions have no leader yet")
        );
    }

    #[test]
    fn fewer_partitions_than_requested_are_grown() {
        let (outcome, grow) = existing_outcome(&request(6, 1), &present(3, 1));
        assert!(grow);
        assert_eq!(outcome.partitions, Some(6));
        assert!(outcome.ready);
        assert_eq!(outcome.message, None);
    }

    #[test]
    fn more_partitions_than_requested_are_kept_and_reported() {
        let (outcome, grow) = existing_outcome(&request(2, 1), &present(5, 1));
        assert!(!grow);
        assert!(outcome.ready);
        assert_eq!(outcome.partitions, Some(5));
        assert_eq!(
            outcome.message.as_deref(),
            Some("has 5 partitions, more than the 2 requested; Kafka cannot shrink")
        );
    }

    #[test]
    fn a_different_replication_factor_is_reported_not_changed() {
        let (outcome, grow) = existing_outcome(&request(3, 3), &present(3, 1));
        assert!(!grow);
        assert!(outcome.ready);
        assert_eq!(
            outcome.message.as_deref(),
            Some("has replication factor 1, not the 3 requested; it is set at creation only")
        );
        // -1 asks for the broker's default: nothing to compare.
        let (outcome, _) = existing_outcome(&request(3, -1), &present(3, 1));
        assert_eq!(outcome.message, None);
    }

    #[test]
    fn config_already_set_writes_nothing() {
        let requested = BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]);
        let current = BTreeMap::from([
            ("retention.ms".to_string(), "1000".to_string()),
            ("cleanup.policy".to_string(), "compact".to_string()),
        ]);
        assert_eq!(config_to_write(&requested, current.clone()), None);
    }

    #[test]
    fn a_differing_config_is_written_with_the_values_others_set() {
        let requested = BTreeMap::from([("retention.ms".to_string(), "2000".to_string())]);
        let current = BTreeMap::from([
            ("retention.ms".to_string(), "1000".to_string()),
            ("cleanup.policy".to_string(), "compact".to_string()),
        ]);
        let written = config_to_write(&requested, current.clone()).expect("a write");
        assert_eq!(
            written,
            BTreeMap::from([
                ("cleanup.policy".to_string(), "compact".to_string()),
                ("retention.ms".to_string(), "2000".to_string())
            ])
        );
        let missing = config_to_write(&requested, BTreeMap::new()).expect("a write");
        assert_eq!(missing, requested);
    }
}
