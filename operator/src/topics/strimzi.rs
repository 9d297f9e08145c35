//! Topic provisioning through Strimzi `KafkaTopic` objects (`strimzi` mode).
//!
//! ```text
//!  ensure(requests)                                     Strimzi's topic operator
//!    1. get each KafkaTopic            (read)             watches KafkaTopics labelled
//!    2. render the desired one (pure): never fewer        strimzi.io/cluster=<cluster>,
//!       partitions than it has, its replicas kept         creates/alters the Kafka topic
//!    3. server-side apply when it differs  (write)  ───▶  and sets status.conditions Ready
//!    4. ready ⇔ status Ready=True for the current generation
//! ```
//!
//! The KafkaTopic carries no owner reference: with `deletionPolicy: Retain` the topic outlives
//! the resource, and with `Delete` the controller calls [`StrimziProvisioner::delete`]. Its
//! object name is [`kafka_topic_object_name`] of the topic name, so it is found again without
//! a list; `spec.topicName` holds the real Kafka name.
//!
//! The KafkaTopic type here is a hand-written subset of Strimzi's `kafka.strimzi.io/v1beta2`
//! schema: only the fields this module writes or reads.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::core::ApiResource;
use kube::{Client, Resource};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{TopicError, TopicOutcome, TopicOwner, TopicProvisioner, TopicRequest};

/// The field manager of every KafkaTopic write.
pub const FIELD_MANAGER: &str = "inputbot-operator";

/// The label Strimzi's topic operator selects its KafkaTopics by.
pub const CLUSTER_LABEL: &str = "strimzi.io/cluster";

/// Longest Kubernetes object name (a DNS-1123 subdomain).
const MAX_OBJECT_NAME: usize = 253;

/// Longest label value.
const MAX_LABEL_VALUE: usize = 63;

/// Hex digits of the SHA-256 appended to a name that had to be changed.
const HASH_LEN: usize = 12;

/// A Strimzi `KafkaTopic` (`kafka.strimzi.io/v1beta2`), the fields inputbot uses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTopic {
    /// `kafka.strimzi.io/v1beta2`.
    pub api_version: String,
    /// `KafkaTopic`.
    pub kind: String,
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// The wanted topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<KafkaTopicSpec>,
    /// What Strimzi's topic operator reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<KafkaTopicStatus>,
}

/// `KafkaTopic.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTopicSpec {
    /// The Kafka topic name (defaults to the object name in Strimzi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,
    /// Partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Replication factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Topic config; Strimzi accepts strings, numbers and booleans as values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<BTreeMap<String, Value>>,
}

/// `KafkaTopic.status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTopicStatus {
    /// Conditions, `Ready` among them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<KafkaTopicCondition>,
    /// The generation the topic operator reconciled last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One entry of `KafkaTopic.status.conditions`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTopicCondition {
    /// `Ready`, `NotReady`, `Warning`, …
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Resource for KafkaTopic {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "KafkaTopic".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "kafka.strimzi.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1beta2".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "kafkatopics".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl KafkaTopic {
    /// The `ApiResource` of `kafka.strimzi.io/v1beta2` `KafkaTopic`, for dynamic clients.
    pub fn api_resource() -> ApiResource {
        ApiResource::erase::<KafkaTopic>(&())
    }

    /// The Kafka topic this object stands for (`spec.topicName`, else the object name).
    pub fn topic_name(&self) -> Option<&str> {
        self.spec
            .as_ref()
            .and_then(|s| s.topic_name.as_deref())
            .or(self.metadata.name.as_deref())
    }
}

/// The object name of the KafkaTopic of a Kafka topic: a DNS-1123 subdomain of at most 253
/// characters. A topic name that already is one is used as it is (inputbot's own names,
/// `inputbot.<ns>.<name>.<suffix>`, always are); any other is lower-cased, `_` and other
/// characters become `-`, labels are trimmed to start and end with a letter or digit, and a
/// hash of the original name is appended, so two distinct topics do not share an object.
pub fn kafka_topic_object_name(topic: &str) -> String {
    let mapped: String = topic
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let cleaned = mapped
        .split('.')
        .map(|label| label.trim_matches('-'))
        .filter(|label| !label.is_empty())
        .collect::<Vec<_>>()
        .join(".");
    if cleaned == topic && cleaned.len() <= MAX_OBJECT_NAME {
        return cleaned;
    }
    let hash = short_hash(topic);
    // `cleaned` is ASCII: byte truncation keeps it valid UTF-8.
    let mut base = cleaned;
    base.truncate(MAX_OBJECT_NAME - HASH_LEN - 1);
    let base = base.trim_end_matches(['-', '.']);
    if base.is_empty() {
        hash
    } else {
        format!("{base}-{hash}")
    }
}

/// A label value for `value` (≤ 63 characters): itself when it fits, else a prefix and a hash.
fn label_value(value: &str) -> String {
    if value.len() <= MAX_LABEL_VALUE {
        return value.to_string();
    }
    // Kubernetes names are ASCII, so is the prefix.
    let prefix = value[..MAX_LABEL_VALUE - HASH_LEN - 1].trim_end_matches(['-', '.', '_']);
    format!("{prefix}-{}", short_hash(value))
}

fn short_hash(value: &str) -> String {
    let digest = hex::encode(Sha256::digest(value.as_bytes()));
    digest[..HASH_LEN].to_string()
}

/// The KafkaTopic to apply for `request`, given what exists, and the notes on what differs
/// from the request (shrink refused, replication factor kept).
fn render(
    cluster: &str,
    namespace: &str,
    owner: &TopicOwner,
    request: &TopicRequest,
    existing: Option<&KafkaTopic>,
) -> (KafkaTopic, Vec<String>) {
    let existing_spec = existing.and_then(|e| e.spec.as_ref());
    let mut notes = Vec::new();

    let mut partitions = request.partitions;
    if let Some(has) = existing_spec.and_then(|s| s.partitions)
        && has > request.partitions
    {
        notes.push(format!(
            "has {has} partitions, more than the {} requested; Kafka cannot shrink",
            request.partitions
        ));
        partitions = has;
    }

    // The replication factor is set at creation; changing it later needs Cruise Control.
    let requested_replicas =
        (request.replication_factor > 0).then_some(i32::from(request.replication_factor));
    // An existing KafkaTopic keeps its replicas, also when it has none (the broker default):
    // writing a number there could ask the topic operator for a replication change.
    let replicas = match existing {
        None => requested_replicas,
        Some(_) => {
            let has = existing_spec.and_then(|s| s.replicas);
            if let (Some(has), Some(wanted)) = (has, requested_replicas)
                && has != wanted
            {
                notes.push(format!(
                    "has replication factor {has}, not the {wanted} requested; it is set at creation only"
                ));
            }
            has
        }
    };

    let labels = BTreeMap::from([
        (CLUSTER_LABEL.to_string(), cluster.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        ),
        (
            "inputbot.dev/owner-kind".to_string(),
            label_value(&owner.kind),
        ),
        (
            "inputbot.dev/owner-name".to_string(),
            label_value(&owner.name),
        ),
        (
            "inputbot.dev/owner-namespace".to_string(),
            label_value(&owner.namespace),
        ),
    ]);
    let config = request
        .config
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect::<BTreeMap<_, _>>();
    let topic = KafkaTopic {
        api_version: KafkaTopic::api_version(&()).into_owned(),
        kind: KafkaTopic::kind(&()).into_owned(),
        metadata: ObjectMeta {
            name: Some(kafka_topic_object_name(&request.name)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(KafkaTopicSpec {
            topic_name: Some(request.name.clone()),
            partitions: Some(partitions),
            replicas,
            config: (!config.is_empty()).then_some(config),
        }),
        status: None,
    };
    (topic, notes)
}

/// Whether applying `desired` would change `existing` (then it is written; else nothing is).
fn needs_write(existing: Option<&KafkaTopic>, desired: &KafkaTopic) -> bool {
    let Some(existing) = existing else {
        return true;
    };
    let labels_present = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| existing.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    let spec = existing.spec.clone().unwrap_or_default();
    let wanted = desired.spec.clone().unwrap_or_default();
    !labels_present
        || spec.topic_name != wanted.topic_name
        || spec.partitions != wanted.partitions
        || spec.replicas != wanted.replicas
        || spec.config.unwrap_or_default() != wanted.config.unwrap_or_default()
}

/// Whether Strimzi's topic operator has made the topic of `topic` ready, and if not, why.
fn readiness(topic: &KafkaTopic) -> (bool, Option<String>) {
    let name = format!(
        "{}/{}",
        topic.metadata.namespace.as_deref().unwrap_or_default(),
        topic.metadata.name.as_deref().unwrap_or_default()
    );
    let waiting = || format!("waiting for Strimzi's topic operator to reconcile KafkaTopic {name}");
    let Some(status) = &topic.status else {
        return (false, Some(waiting()));
    };
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    let not_ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "NotReady" && c.status == "True");
    match (ready, not_ready) {
        (Some(c), _) if c.status == "True" => {
            match (status.observed_generation, topic.metadata.generation) {
                (Some(observed), Some(generation)) if observed < generation => (
                    false,
                    Some(format!(
                        "waiting for Strimzi's topic operator to reconcile generation \
                         {generation} of KafkaTopic {name} (it reported {observed})"
                    )),
                ),
                _ => (true, None),
            }
        }
        (Some(c), _) | (None, Some(c)) => {
            let why = c
                .message
                .clone()
                .or_else(|| c.reason.clone())
                .unwrap_or_else(waiting);
            (
                false,
                Some(format!("KafkaTopic {name} is not ready: {why}")),
            )
        }
        (None, None) => (false, Some(waiting())),
    }
}

/// Provisions topics as Strimzi `KafkaTopic` objects (`strimzi` mode).
pub struct StrimziProvisioner {
    client: Client,
    cluster: String,
    namespace: Option<String>,
}

impl StrimziProvisioner {
    /// KafkaTopics labelled `strimzi.io/cluster: <cluster>`, written to `namespace` (the one
    /// Strimzi's topic operator watches), or with `None` to the owning resource's namespace.
    pub fn new(
        client: Client,
        cluster: impl Into<String>,
        namespace: Option<String>,
    ) -> StrimziProvisioner {
        StrimziProvisioner {
            client,
            cluster: cluster.into(),
            namespace,
        }
    }

    fn namespace_for<'a>(&'a self, owner: &'a TopicOwner) -> &'a str {
        self.namespace.as_deref().unwrap_or(&owner.namespace)
    }

    async fn ensure_one(
        &self,
        api: &Api<KafkaTopic>,
        namespace: &str,
        owner: &TopicOwner,
        request: &TopicRequest,
    ) -> Result<TopicOutcome, TopicError> {
        let object = kafka_topic_object_name(&request.name);
        let kube_error = |source| TopicError::Kube {
            namespace: namespace.to_string(),
            name: object.clone(),
            source,
        };
        let existing = api.get_opt(&object).await.map_err(kube_error)?;
        if let Some(other) = existing.as_ref().and_then(|e| e.topic_name())
            && other != request.name
        {
            return Ok(TopicOutcome {
                name: request.name.clone(),
                partitions: None,
                ready: false,
                message: Some(format!(
                    "KafkaTopic {namespace}/{object} already exists for topic {other:?}; \
                     not overwritten"
                )),
            });
        }
        let (desired, mut notes) =
            render(&self.cluster, namespace, owner, request, existing.as_ref());
        let current = if needs_write(existing.as_ref(), &desired) {
            let applied = api
                .patch(
                    &object,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&desired),
                )
                .await
                .map_err(kube_error)?;
            tracing::info!(kafka_topic = %format_args!("{namespace}/{object}"), topic = %request.name, "applied KafkaTopic");
            applied
        } else {
            existing.unwrap_or(desired)
        };
        let (ready, why) = readiness(&current);
        if let Some(why) = why {
            notes.insert(0, why);
        }
        Ok(TopicOutcome {
            name: request.name.clone(),
            partitions: if ready {
                current.spec.as_ref().and_then(|s| s.partitions)
            } else {
                None
            },
            ready,
            message: (!notes.is_empty()).then(|| notes.join("; ")),
        })
    }
}

#[async_trait::async_trait]
impl TopicProvisioner for StrimziProvisioner {
    fn mode(&self) -> &'static str {
        "strimzi"
    }

    async fn ensure(
        &self,
        owner: &TopicOwner,
        topics: &[TopicRequest],
    ) -> Result<Vec<TopicOutcome>, TopicError> {
        let namespace = self.namespace_for(owner);
        let api: Api<KafkaTopic> = Api::namespaced(self.client.clone(), namespace);
        let mut outcomes = Vec::with_capacity(topics.len());
        for request in topics {
            outcomes.push(self.ensure_one(&api, namespace, owner, request).await?);
        }
        Ok(outcomes)
    }

    async fn delete(&self, owner: &TopicOwner, topics: &[String]) -> Result<(), TopicError> {
        let namespace = self.namespace_for(owner);
        let api: Api<KafkaTopic> = Api::namespaced(self.client.clone(), namespace);
        for topic in topics {
            let object = kafka_topic_object_name(topic);
            let kube_error = |source| TopicError::Kube {
                namespace: namespace.to_string(),
                name: object.clone(),
                source,
            };
            let Some(existing) = api.get_opt(&object).await.map_err(kube_error)? else {
                continue;
            };
            if existing.topic_name() != Some(topic.as_str()) {
                // Someone else's KafkaTopic under the name we would use: not ours to delete.
                tracing::warn!(
                    kafka_topic = %format_args!("{namespace}/{object}"),
                    topic = %topic,
                    "KafkaTopic stands for another topic; not deleted"
                );
                continue;
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: existing.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&object, &params).await {
                Ok(_) => {
                    tracing::info!(kafka_topic = %format_args!("{namespace}/{object}"), topic = %topic, "deleted KafkaTopic");
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => return Err(kube_error(source)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::json;

    use super::*;

    /// A DNS-1123 subdomain, as Kubernetes checks object names.
    fn is_dns1123_subdomain(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_OBJECT_NAME
            && name.split('.').all(|label| {
                let bytes = label.as_bytes();
                !bytes.is_empty()
                    && bytes
                        .iter()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                    && bytes[0] != b'-'
                    && bytes[bytes.len() - 1] != b'-'
            })
    }

    fn owner() -> TopicOwner {
        TopicOwner {
            api_version: "inputbot.dev/v1alpha1".into(),
            kind: "InputBot".into(),
            namespace: "shop".into(),
            name: "orders".into(),
            uid: "0000-1111".into(),
        }
    }

    fn request(partitions: i32, rf: i16) -> TopicRequest {
        TopicRequest {
            name: "inputbot.shop.orders.raw".into(),
            partitions,
            replication_factor: rf,
            config: BTreeMap::from([("retention.ms".into(), "604800000".into())]),
        }
    }

    #[test]
    fn inputbot_topic_names_are_their_own_object_names() {
        for name in [
            "inputbot.shop.orders.raw",
            "inputbot.shop.triage-v2.out",
            "inputbot.a-b.c.dlq",
        ] {
            assert_eq!(kafka_topic_object_name(name), name);
        }
    }

    #[test]
    fn object_names_are_dns_valid_and_never_collide() {
        let long = "a".repeat(249);
        let long_upper = format!("{}B", "a".repeat(248));
        let long_upper2 = format!("{}C", "a".repeat(248));
        let topics = [
            "inputbot.shop.orders.raw",
            "inputbot.shop.Orders.raw",
            "inputbot.shop.ORDERS.raw",
            "inputbot.shop.orders_v2.raw",
            "inputbot.shop.orders-v2.raw",
            "inputbot.shop.orders__v2.raw",
            "inputbot..shop",
            "inputbot.shop",
            "-inputbot.shop-",
            "inputbot.-shop",
            "_",
            "__",
            "-",
            ".",
            "..",
            "A",
            "a",
            long.as_str(),
            long_upper.as_str(),
            long_upper2.as_str(),
        ];
        let mut seen = HashSet::new();
        for topic in topics {
            let name = kafka_topic_object_name(topic);
            assert!(is_dns1123_subdomain(&name), "{topic:?} → {name:?}");
            assert!(name.len() <= 253, "{topic:?} → {} chars", name.len());
            assert!(seen.insert(name.clone()), "{topic:?} collides as {name:?}");
        }
    }

    #[test]
    fn changed_names_keep_a_readable_prefix_and_are_stable() {
        let name = kafka_topic_object_name("inputbot.shop.Orders_V2.raw");
        assert!(name.starts_with("inputbot.shop.orders-v2.raw-"), "{name}");
        assert_eq!(name, kafka_topic_object_name("inputbot.shop.Orders_V2.raw"));
    }

    #[test]
    fn long_owner_names_become_valid_label_values() {
        let name = "x".repeat(200);
        let value = label_value(&name);
        assert!(value.len() <= 63, "{value}");
        assert_ne!(value, label_value(&format!("{}y", "x".repeat(199))));
        assert_eq!(label_value("orders"), "orders");
    }

    #[test]
    fn rendered_kafka_topic_matches_strimzi_v1beta2() {
        let (topic, notes) = render("my-cluster", "kafka", &owner(), &request(3, 1), None);
        assert!(notes.is_empty());
        assert_eq!(
            serde_json::to_value(&topic).expect("JSON"),
            json!({
                "apiVersion": "kafka.strimzi.io/v1beta2",
                "kind": "KafkaTopic",
                "metadata": {
                    "name": "inputbot.shop.orders.raw",
                    "namespace": "kafka",
                    "labels": {
                        "app.kubernetes.io/managed-by": "inputbot-operator",
                        "inputbot.dev/owner-kind": "InputBot",
                        "inputbot.dev/owner-name": "orders",
                        "inputbot.dev/owner-namespace": "shop",
                        "strimzi.io/cluster": "my-cluster",
                    },
                },
                "spec": {
                    "topicName": "inputbot.shop.orders.raw",
                    "partitions": 3,
                    "replicas": 1,
                    "config": {"retention.ms": "604800000"},
                },
            })
        );
        // No owner reference: deletionPolicy Retain must keep the topic.
        assert!(topic.metadata.owner_references.is_none());
    }

    fn existing(partitions: i32, replicas: i32) -> KafkaTopic {
        let (mut topic, _) = render(
            "my-cluster",
            "kafka",
            &owner(),
            &request(partitions, replicas as i16),
            None,
        );
        topic.metadata.generation = Some(1);
        topic
    }

    #[test]
    fn an_existing_topic_with_more_partitions_keeps_them() {
        let (topic, notes) = render(
            "my-cluster",
            "kafka",
            &owner(),
            &request(2, 1),
            Some(&existing(5, 1)),
        );
        assert_eq!(topic.spec.as_ref().and_then(|s| s.partitions), Some(5));
        assert_eq!(
            notes,
            ["has 5 partitions, more than the 2 requested; Kafka cannot shrink"]
        );
    }

    #[test]
    fn an_existing_topic_with_fewer_partitions_is_grown() {
        let old = existing(2, 1);
        let (topic, notes) = render("my-cluster", "kafka", &owner(), &request(6, 1), Some(&old));
        assert_eq!(topic.spec.as_ref().and_then(|s| s.partitions), Some(6));
        assert!(notes.is_empty());
        assert!(needs_write(Some(&old), &topic));
    }

    #[test]
    fn an_existing_replication_factor_is_kept_and_reported() {
        let (topic, notes) = render(
            "my-cluster",
            "kafka",
            &owner(),
            &request(3, 3),
            Some(&existing(3, 1)),
        );
        assert_eq!(topic.spec.as_ref().and_then(|s| s.replicas), Some(1));
        assert_eq!(
            notes,
            ["has replication factor 1, not the 3 requested; it is set at creation only"]
        );
    }

    #[test]
    fn an_existing_kafka_topic_without_replicas_gets_none() {
        let mut old = existing(3, 1);
        if let Some(spec) = old.spec.as_mut() {
            spec.replicas = None;
        }
        let (topic, notes) = render("my-cluster", "kafka", &owner(), &request(3, 3), Some(&old));
        assert_eq!(topic.spec.as_ref().and_then(|s| s.replicas), None);
        assert!(notes.is_empty());
    }

    #[test]
    fn an_unchanged_kafka_topic_is_not_written() {
        let old = existing(3, 1);
        let (topic, _) = render("my-cluster", "kafka", &owner(), &request(3, 1), Some(&old));
        assert!(!needs_write(Some(&old), &topic));
        assert!(needs_write(None, &topic));
        let mut relabelled = old.clone();
        relabelled.metadata.labels = None;
        assert!(needs_write(Some(&relabelled), &topic));
    }

    fn with_status(generation: i64, observed: i64, conditions: Value) -> KafkaTopic {
        let mut topic = existing(3, 1);
        topic.metadata.generation = Some(generation);
        topic.status = Some(
            serde_json::from_value(json!({
                "observedGeneration": observed,
                "conditions": conditions,
            }))
            .expect("a status"),
        );
        topic
    }

    #[test]
    fn a_kafka_topic_without_status_is_waiting_for_the_topic_operator() {
        let (ready, message) = readiness(&existing(3, 1));
        assert!(!ready);
        assert_eq!(
            message.as_deref(),
            Some(
                "waiting for Strimzi's topic operator to reconcile KafkaTopic \
                 kafka/inputbot.shop.orders.raw"
            )
        );
    }

    #[test]
    fn ready_true_for_the_current_generation_is_ready() {
        let topic = with_status(2, 2, json!([{"type": "Ready", "status": "True"}]));
        assert_eq!(readiness(&topic), (true, None));
    }

    #[test]
    fn ready_true_for_an_older_generation_is_not_ready() {
        let topic = with_status(3, 2, json!([{"type": "Ready", "status": "True"}]));
        let (ready, message) = readiness(&topic);
        assert!(!ready);
        assert!(message.expect("a message").contains("generation 3"));
    }

    #[test]
    fn a_not_ready_condition_gives_its_message() {
        let topic = with_status(
            1,
            1,
            json!([{"type": "NotReady", "status": "True", "reason": "KafkaError",
                    "message": "Invalid replication factor"}]),
        );
        let (ready, message) = readiness(&topic);
        assert!(!ready);
        assert_eq!(
            message.as_deref(),
            Some(
                "KafkaTopic kafka/inputbot.shop.orders.raw is not ready: Invalid replication factor"
            )
        );
    }

    #[test]
    fn kube_errors_for_invalid_objects_are_permanent_and_others_transient() {
        let error = |code: u16| TopicError::Kube {
            namespace: "kafka".into(),
            name: "t".into(),
            source: kube::Error::Api(Box::new(
                serde_json::from_value(
                    json!({"code": code, "message": "x", "reason": "x", "status": "Failure"}),
                )
                .expect("a Status"),
            )),
        };
        assert!(error(422).is_permanent());
        assert!(error(403).is_permanent());
        assert!(!error(500).is_permanent());
        assert!(!error(409).is_permanent());
    }
}
