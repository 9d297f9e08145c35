//! Render: resources in, Kubernetes objects out — a pure function, the one code path behind
//! both the controllers and `inputbot-operator render`.
//!
//! ```text
//!  InputBot ──▶ ConfigMap + Deployment (ingest: webhook and kafka sources) + Service
//!               [+ PodDisruptionBudget when > 1 replica] [+ Ingress when exposed]
//!               [+ ConfigMap + Deployment "poller": poll and schedule sources, 1 replica, Recreate]
//!               [+ HorizontalPodAutoscaler]                              topic: raw
//!  Pipeline ──▶ ConfigMap + Deployment (process) [+ HPA | KEDA ScaledObject] topics: out, dlq
//!  ActionBinding ──▶ ConfigMap + Deployment (act) [+ HPA | KEDA ScaledObject] topic: act dlq
//! ```
//!
//! Each child carries a controller owner reference, the `app.kubernetes.io/*` labels and the
//! annotation [`HASH_ANNOTATION`] (a digest of everything the operator sets on it), which lets a
//! reconcile skip writes that would change nothing.

mod autoscaler;
mod component;
mod ingress;
mod plan;
mod service;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{ConfigMap, Service},
    networking::v1::Ingress,
    policy::v1::PodDisruptionBudget,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use autoscaler::{KEDA_GROUP, scaled_object_resource};
/// The runtime image's user (images/Dockerfile, scripts/images.sh), which the rendered
/// Deployments run as.
pub use component::RUNTIME_UID;
pub use plan::{
    AutoscalingState, BindingInputs, Capabilities, PipelineInputs, Plan, PlanError, plan_binding,
    plan_bot, plan_pipeline, render_files,
};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "inputbot-operator";
/// `app.kubernetes.io/managed-by` of every child.
pub const MANAGED_BY: &str = "inputbot-operator";
/// Annotation holding the digest of what the operator set on a child.
pub const HASH_ANNOTATION: &str = "inputbot.dev/rendered-hash";
/// Pod-template annotation holding the digest of the component's config: a change rolls the
/// Deployment.
pub const CONFIG_HASH_ANNOTATION: &str = "inputbot.dev/config-hash";
/// Label naming the owning resource's kind (lower case), for pruning.
pub const OWNER_KIND_LABEL: &str = "inputbot.dev/owner-kind";
/// Label naming the owning resource, for pruning.
pub const OWNER_NAME_LABEL: &str = "inputbot.dev/owner-name";
/// Port the runtime serves webhooks, probes and metrics on.
pub const RUNTIME_PORT: i32 = 8080;

/// The resource that owns a set of children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// `InputBot`, `Pipeline` or `ActionBinding`.
    pub kind: &'static str,
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// UID (empty when rendering files that were never applied).
    pub uid: String,
    /// The InputBot the resource belongs to (`app.kubernetes.io/part-of`).
    pub bot: String,
}

impl Owner {
    /// Of a resource read from the cluster or from files.
    pub fn of<K: kube::Resource<DynamicType = ()>>(
        kind: &'static str,
        obj: &K,
        bot: &str,
    ) -> Owner {
        let meta = obj.meta();
        Owner {
            kind,
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            uid: meta.uid.clone().unwrap_or_default(),
            bot: bot.to_owned(),
        }
    }

    fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: format!("{}/{}", inputbot_api::GROUP, inputbot_api::VERSION),
            kind: self.kind.to_owned(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// The labels selecting every child of this owner.
    pub fn selector(&self) -> String {
        format!(
            "app.kubernetes.io/managed-by={MANAGED_BY},{OWNER_KIND_LABEL}={},{OWNER_NAME_LABEL}={}",
            self.kind.to_ascii_lowercase(),
            self.name
        )
    }

    /// Labels of a child of this owner in a role (`ingest`, `poller`, `process`, `act`).
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels(component);
        labels.insert("app.kubernetes.io/part-of".into(), self.bot.clone());
        labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
        labels.insert(OWNER_KIND_LABEL.into(), self.kind.to_ascii_lowercase());
        labels.insert(OWNER_NAME_LABEL.into(), self.name.clone());
        labels
    }

    /// The immutable pod selector of a component's Deployment.
    pub fn selector_labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "inputbot".to_owned()),
            ("app.kubernetes.io/instance".to_owned(), self.name.clone()),
            (
                "app.kubernetes.io/component".to_owned(),
                component.to_owned(),
            ),
        ])
    }

    /// Metadata of a child named `name` in `component`.
    pub fn child_meta(&self, name: &str, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: (!self.uid.is_empty()).then(|| vec![self.owner_reference()]),
            ..ObjectMeta::default()
        }
    }
}

/// One object the operator keeps.
// A handful per reconcile, moved into a Vec once: boxing the big variants buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Child {
    /// A component's resolved config.
    ConfigMap(ConfigMap),
    /// A component's workload.
    Deployment(Deployment),
    /// The ingest Service.
    Service(Service),
    /// The ingest disruption budget.
    PodDisruptionBudget(PodDisruptionBudget),
    /// The ingest Ingress.
    Ingress(Ingress),
    /// CPU autoscaling.
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    /// Lag autoscaling through KEDA (`keda.sh/v1alpha1` `ScaledObject`).
    ScaledObject(Value),
}

/// The kinds of child the operator creates, in apply order: configuration before the
/// workloads that mount it, workloads before what routes to or scales them.
pub const CHILD_KINDS: [ChildKind; 7] = [
    ChildKind::ConfigMap,
    ChildKind::Deployment,
    ChildKind::Service,
    ChildKind::PodDisruptionBudget,
    ChildKind::Ingress,
    ChildKind::HorizontalPodAutoscaler,
    ChildKind::ScaledObject,
];

/// The kind of a [`Child`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildKind {
    /// `v1` ConfigMap.
    ConfigMap,
    /// `apps/v1` Deployment.
    Deployment,
    /// `v1` Service.
    Service,
    /// `policy/v1` PodDisruptionBudget.
    PodDisruptionBudget,
    /// `networking.k8s.io/v1` Ingress.
    Ingress,
    /// `autoscaling/v2` HorizontalPodAutoscaler.
    HorizontalPodAutoscaler,
    /// `keda.sh/v1alpha1` ScaledObject.
    ScaledObject,
}

impl ChildKind {
    /// The API resource of the kind.
    pub fn api_resource(self) -> ApiResource {
        match self {
            ChildKind::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
            ChildKind::Deployment => ApiResource::erase::<Deployment>(&()),
            ChildKind::Service => ApiResource::erase::<Service>(&()),
            ChildKind::PodDisruptionBudget => ApiResource::erase::<PodDisruptionBudget>(&()),
            ChildKind::Ingress => ApiResource::erase::<Ingress>(&()),
            ChildKind::HorizontalPodAutoscaler => {
                ApiResource::erase::<HorizontalPodAutoscaler>(&())
            }
            ChildKind::ScaledObject => scaled_object_resource(),
        }
    }

    /// The group/version/kind.
    pub fn gvk(self) -> GroupVersionKind {
        let ar = self.api_resource();
        GroupVersionKind::gvk(&ar.group, &ar.version, &ar.kind)
    }
}

impl Child {
    /// The kind.
    pub fn kind(&self) -> ChildKind {
        match self {
            Child::ConfigMap(_) => ChildKind::ConfigMap,
            Child::Deployment(_) => ChildKind::Deployment,
            Child::Service(_) => ChildKind::Service,
            Child::PodDisruptionBudget(_) => ChildKind::PodDisruptionBudget,
            Child::Ingress(_) => ChildKind::Ingress,
            Child::HorizontalPodAutoscaler(_) => ChildKind::HorizontalPodAutoscaler,
            Child::ScaledObject(_) => ChildKind::ScaledObject,
        }
    }

    /// The object as JSON with `apiVersion` and `kind`: what server-side apply sends.
    pub fn to_json(&self) -> Value {
        fn typed<K: serde::Serialize + kube::Resource<DynamicType = ()>>(k: &K) -> Value {
            let mut v = serde_json::to_value(k).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut v {
                map.insert("apiVersion".into(), K::api_version(&()).into());
                map.insert("kind".into(), K::kind(&()).into());
            }
            v
        }
        match self {
            Child::ConfigMap(o) => typed(o),
            Child::Deployment(o) => typed(o),
            Child::Service(o) => typed(o),
            Child::PodDisruptionBudget(o) => typed(o),
            Child::Ingress(o) => typed(o),
            Child::HorizontalPodAutoscaler(o) => typed(o),
            Child::ScaledObject(v) => v.clone(),
        }
    }

    /// The object's name.
    pub fn name(&self) -> String {
        self.to_json()["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The object with [`HASH_ANNOTATION`] set to the digest of the rest of it.
    pub fn with_hash(self) -> (Value, String) {
        let mut json = self.to_json();
        let hash = digest(&json);
        if let Some(meta) = json.get_mut("metadata").and_then(Value::as_object_mut) {
            let annotations = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Value::Object(a) = annotations {
                a.insert(HASH_ANNOTATION.into(), hash.clone().into());
            }
        }
        (json, hash)
    }
}

/// A short, stable digest of a JSON value (serde_json keeps key order as built).
pub fn digest(value: &Value) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..12])
}
