//! Kafka topic provisioning behind one trait, with two implementations chosen by the
//! operator's settings:
//!
//! ```text
//!  controller ──ensure(&[TopicRequest])──▶ dyn TopicProvisioner
//!                                            ├── admin::AdminProvisioner    (Kafka Admin API)
//!                                            └── strimzi::StrimziProvisioner (KafkaTopic objects)
//! ```
//!
//! Both are idempotent: `ensure` creates what is missing, grows partitions (never shrinks) and
//! sets the topic config (retention); `delete` removes topics and succeeds when they are gone
//! already. The controller calls `delete` only for resources with `deletionPolicy: Delete`.

use std::collections::BTreeMap;

pub mod admin;
pub mod strimzi;

/// Who asks for a topic: the resource that owns it. Strimzi uses it for labels (never for an
/// owner reference: `deletionPolicy: Retain` must keep the topic); the admin mode for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicOwner {
    /// `inputbot.dev/v1alpha1`.
    pub api_version: String,
    /// `InputBot`, `Pipeline` or `ActionBinding`.
    pub kind: String,
    /// Namespace of the resource.
    pub namespace: String,
    /// Name of the resource.
    pub name: String,
    /// UID of the resource.
    pub uid: String,
}

/// One topic a resource needs, with its settings resolved (defaults applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRequest {
    /// The Kafka topic name (`inputbot.<ns>.<name>.raw`, …), already checked against Kafka's rules.
    pub name: String,
    /// Wanted partitions. An existing topic with fewer is grown; one with more is left alone.
    pub partitions: i32,
    /// Wanted replication factor (applied at creation only; a difference later is reported).
    pub replication_factor: i16,
    /// Topic-level config, e.g. `retention.ms` → `604800000`.
    pub config: BTreeMap<String, String>,
}

/// What `ensure` found or did for one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicOutcome {
    /// The topic name.
    pub name: String,
    /// Partitions the topic has now, when known (Strimzi reports them only once reconciled).
    pub partitions: Option<i32>,
    /// Whether the topic exists and is usable.
    pub ready: bool,
    /// Why it is not ready, or what differs from the request (shrink refused, replication
    /// factor differs). Shown in the resource's `TopicsReady` condition.
    pub message: Option<String>,
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The Kafka Admin API failed (broker unreachable, timeout, authorization).
    #[error("Kafka admin request for topic {topic:?} failed: {message}")]
    Kafka {
        /// The topic concerned.
        topic: String,
        /// The broker's or client's message.
        message: String,
        /// Retrying cannot help (e.g. invalid replication factor, authorization failed).
        permanent: bool,
    },
    /// The Kubernetes API failed while writing or reading a KafkaTopic.
    #[error("KafkaTopic {namespace}/{name}: {source}")]
    Kube {
        /// Namespace of the KafkaTopic.
        namespace: String,
        /// Name of the KafkaTopic.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

impl TopicError {
    /// Whether retrying the same request cannot succeed (drives the controller's error policy).
    pub fn is_permanent(&self) -> bool {
        match self {
            TopicError::Kafka { permanent, .. } => *permanent,
            TopicError::Kube { source, .. } => matches!(
                source,
                kube::Error::Api(s) if s.code == 400 || s.code == 403 || s.code == 422
            ),
        }
    }
}

/// Creates, grows and deletes the Kafka topics of inputbot resources.
#[async_trait::async_trait]
pub trait TopicProvisioner: Send + Sync {
    /// `admin` or `strimzi`, for logs, metrics and status messages.
    fn mode(&self) -> &'static str;

    /// Makes every requested topic exist with at least the requested partitions and the
    /// requested config. Idempotent; returns one outcome per request, in order.
    async fn ensure(
        &self,
        owner: &TopicOwner,
        topics: &[TopicRequest],
    ) -> Result<Vec<TopicOutcome>, TopicError>;

    /// Deletes the named topics. Succeeds when they do not exist.
    async fn delete(&self, owner: &TopicOwner, topics: &[String]) -> Result<(), TopicError>;
}
