//! What every reconcile shares, behind one `Arc`: the client, the event recorder, metrics,
//! settings, the topic provisioner, the stores of the children and of the referenced
//! resources (a reconcile reads only these, never the API server), and the small caches
//! that let a reconcile which would change nothing write nothing. Nothing here is global.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use inputbot_api::{InputBot, Pipeline};
use k8s_openapi::{api::apps::v1::Deployment, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Client, Resource,
    api::{DynamicObject, PartialObjectMeta},
    core::DeserializeGuard,
    runtime::reflector::{ObjectRef, Store},
};

use crate::{
    error::{Error, Result},
    events::Recorder,
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
    /// Metadata of the children, by kind, as the watches last saw them (not Deployments).
    pub stores: HashMap<ChildKind, Store<PartialObjectMeta<DynamicObject>>>,
    /// The Deployments of this controller's resources: metadata and status, no pod template.
    pub deployments: Store<Deployment>,
    /// The stores of the kinds this controller's resources reference.
    pub references: References,
    /// Per child: the hash the operator applied and the revision the API server answered
    /// with. A child whose live revision and hash still match is not written again.
    pub applied: Mutex<HashMap<ChildKey, (String, String)>>,
    /// Per Deployment: the generation of the operator's last write that changed it. A
    /// Deployment whose controller has not observed that generation yet is still rolling
    /// out; a later generation (an autoscaler's replica count) is not a rollout to wait for.
    pub rollouts: Mutex<HashMap<ChildKey, i64>>,
    /// Per resource UID: the hash of the topics last ensured ready, when, and the message
    /// that check gave. Topics are ensured again when the request changes or the entry is
    /// older than [`TOPIC_RECHECK`].
    pub topics_ready: Mutex<HashMap<String, (String, Instant, String)>>,
    /// (UID, generation) pairs whose warnings this process published: once per spec change.
    pub warned: Mutex<HashSet<(String, i64)>>,
    /// Consecutive transient failures per resource, for the requeue backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Capabilities of the cluster and when they were read.
    pub capabilities: Mutex<Option<(Capabilities, Instant)>>,
}

/// How long ready topics are trusted before they are checked again.
pub const TOPIC_RECHECK: Duration = Duration::from_secs(600);
/// How long the discovered capabilities are trusted.
pub const CAPABILITIES_TTL: Duration = Duration::from_secs(60);

/// The stores of referenced kinds (the main stores of their controllers, shared).
#[derive(Clone, Default)]
pub struct References {
    /// Every InputBot (for Pipelines and ActionBindings).
    pub bots: Option<Store<DeserializeGuard<InputBot>>>,
    /// Every Pipeline (for ActionBindings).
    pub pipelines: Option<Store<DeserializeGuard<Pipeline>>>,
}

/// Looks `name` up in a store once it has listed, so that a starting operator never takes a
/// resource it has not read yet for a missing one.
async fn lookup<K>(
    store: Option<&Store<DeserializeGuard<K>>>,
    namespace: &str,
    name: &str,
) -> Result<Option<K>>
where
    K: Resource<DynamicType = ()> + Clone + crate::controller::Reconciled,
{
    let Some(store) = store else {
        return Ok(None);
    };
    // Err only when the store's writer is gone, i.e. the operator is shutting down.
    let _ = store.wait_until_ready().await;
    match store.get(&ObjectRef::new(name).within(namespace)) {
        None => Ok(None),
        Some(guard) => match &guard.0 {
            Ok(obj) => Ok(Some(obj.clone())),
            Err(invalid) => Err(Error::Malformed(format!(
                "referenced {} {namespace}/{name}: {}",
                <K as crate::controller::Reconciled>::KIND,
                invalid.error
            ))),
        },
    }
}

impl Context {
    /// The InputBot `namespace/name`, as the watch last saw it.
    pub async fn bot(&self, namespace: &str, name: &str) -> Result<Option<InputBot>> {
        lookup(self.references.bots.as_ref(), namespace, name).await
    }

    /// The Pipeline `namespace/name`, as the watch last saw it.
    pub async fn pipeline(&self, namespace: &str, name: &str) -> Result<Option<Pipeline>> {
        lookup(self.references.pipelines.as_ref(), namespace, name).await
    }

    /// Whether children of `kind` are watched (and so can be pruned).
    pub fn watches(&self, kind: ChildKind) -> bool {
        kind == ChildKind::Deployment || self.stores.contains_key(&kind)
    }

    /// The live metadata of a child, as its watch last saw it.
    pub async fn child_meta(
        &self,
        kind: ChildKind,
        namespace: &str,
        name: &str,
    ) -> Option<ObjectMeta> {
        if kind == ChildKind::Deployment {
            let _ = self.deployments.wait_until_ready().await;
            return self
                .deployments
                .get(&ObjectRef::new(name).within(namespace))
                .map(|d| d.metadata.clone());
        }
        let store = self.stores.get(&kind)?;
        let _ = store.wait_until_ready().await;
        store
            .get(&ObjectRef::new_with(name, kind.api_resource()).within(namespace))
            .map(|m| m.metadata.clone())
    }

    /// The names of the children of `kind` in `namespace` whose controller is `owner_uid`.
    pub async fn children_of(
        &self,
        kind: ChildKind,
        namespace: &str,
        owner_uid: &str,
    ) -> Vec<String> {
        let ours = |m: &ObjectMeta| {
            m.namespace.as_deref() == Some(namespace)
                && m.owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.uid == owner_uid && o.controller == Some(true))
        };
        if kind == ChildKind::Deployment {
            let _ = self.deployments.wait_until_ready().await;
            return self
                .deployments
                .state_filter(|d| ours(&d.metadata))
                .iter()
                .filter_map(|d| d.metadata.name.clone())
                .collect();
        }
        let Some(store) = self.stores.get(&kind) else {
            return Vec::new();
        };
        let _ = store.wait_until_ready().await;
        store
            .state_filter(|m| ours(&m.metadata))
            .iter()
            .filter_map(|m| m.metadata.name.clone())
            .collect()
    }

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
