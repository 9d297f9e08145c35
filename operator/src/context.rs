//! What every reconcile shares, behind one `Arc`: the client, the event recorder, metrics,
//! settings, the topic provisioner, the metadata stores of the children, and the small caches
//! that let a reconcile which would change nothing write nothing. Nothing here is global.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::{
    Client,
    api::{DynamicObject, PartialObjectMeta},
    runtime::{events::Recorder, reflector::Store},
};

use crate::{
    metrics::Metrics,
    render::{Capabilities, ChildKind},
    settings::Settings,
    topics::TopicProvisioner,
};

/// Key of a child in the caches: kind, namespace, name.
pub type ChildKey = (ChildKind, String, String);

/// The shared state of the controllers.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Events on the resources.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Rendering and Kafka settings.
    pub settings: Settings,
    /// Topic provisioning (admin or strimzi).
    pub topics: Arc<dyn TopicProvisioner>,
    /// Metadata of the children, by kind, as the watches last saw them.
    pub stores: HashMap<ChildKind, Store<PartialObjectMeta<DynamicObject>>>,
    /// Per child: the hash the operator applied and the revision the API server answered
    /// with. A child whose live revision and hash still match is not written again.
    pub applied: Mutex<HashMap<ChildKey, (String, String)>>,
    /// Per resource UID: the hash of the topics last ensured ready, when, and the message
    /// that check gave. Topics are ensured again when the request changes or the entry is
    /// older than [`TOPIC_RECHECK`].
    pub topics_ready: Mutex<HashMap<String, (String, Instant, String)>>,
    /// (UID, generation) pairs this process pruned for: prune runs once per spec change.
    pub pruned: Mutex<HashSet<(String, i64)>>,
    /// Consecutive transient failures per resource, for the requeue backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Capabilities of the cluster and when they were read.
    pub capabilities: Mutex<Option<(Capabilities, Instant)>>,
}

/// How long ready topics are trusted before they are checked again.
pub const TOPIC_RECHECK: Duration = Duration::from_secs(600);
/// How long the discovered capabilities are trusted.
pub const CAPABILITIES_TTL: Duration = Duration::from_secs(60);

impl Context {
    /// The capabilities of the cluster (is KEDA installed?), rediscovered once a minute.
    pub async fn capabilities(&self) -> Capabilities {
        if let Some((caps, at)) = *self.capabilities.lock().expect("lock")
            && at.elapsed() < CAPABILITIES_TTL
        {
            return caps;
        }
        let keda = match self
            .client
            .list_api_group_resources(&format!("{}/v1alpha1", crate::render::KEDA_GROUP))
            .await
        {
            Ok(list) => list.resources.iter().any(|r| r.name == "scaledobjects"),
            Err(_) => false,
        };
        let caps = Capabilities { keda };
        *self.capabilities.lock().expect("lock") = Some((caps, Instant::now()));
        caps
    }

    /// The requeue delay after a transient failure of `uid`: 1 s doubling to 5 min.
    pub fn backoff(&self, uid: &str) -> Duration {
        let mut failures = self.failures.lock().expect("lock");
        let n = failures.entry(uid.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    /// Forgets the failures of `uid` after a success.
    pub fn succeeded(&self, uid: &str) {
        self.failures.lock().expect("lock").remove(uid);
    }
}
