//! Autoscalers: an `autoscaling/v2` HorizontalPodAutoscaler on CPU, or — for consumers that
//! ask to scale on lag — a KEDA `ScaledObject` with a Kafka trigger. KEDA owns an HPA of its
//! own, so a component never has both. Consumer replicas never exceed the topic's partitions.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use kube::core::ApiResource;
use serde_json::{Value, json};

use super::Owner;

/// API group of KEDA.
pub const KEDA_GROUP: &str = "keda.sh";

/// The API resource of KEDA's ScaledObject.
pub fn scaled_object_resource() -> ApiResource {
    ApiResource {
        group: KEDA_GROUP.into(),
        version: "v1alpha1".into(),
        api_version: format!("{KEDA_GROUP}/v1alpha1"),
        kind: "ScaledObject".into(),
        plural: "scaledobjects".into(),
    }
}

/// A CPU HPA for the component's Deployment.
pub fn hpa(
    owner: &Owner,
    component: &str,
    min: i32,
    max: i32,
    cpu: i32,
) -> HorizontalPodAutoscaler {
    let name = inputbot_api::names::child_name(&owner.name, component);
    HorizontalPodAutoscaler {
        metadata: owner.child_meta(&name, component),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: name.clone(),
            },
            min_replicas: Some(min),
            max_replicas: max,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(cpu),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    }
}

/// Everything a lag trigger needs.
pub struct LagTrigger<'a> {
    /// Bootstrap servers.
    pub bootstrap: &'a str,
    /// The consumer group whose lag counts.
    pub consumer_group: &'a str,
    /// The topic consumed.
    pub topic: &'a str,
    /// Lag per replica.
    pub lag_threshold: i64,
}

/// A KEDA ScaledObject scaling the component's Deployment on consumer-group lag.
pub fn scaled_object(
    owner: &Owner,
    component: &str,
    min: i32,
    max: i32,
    trigger: &LagTrigger<'_>,
) -> Value {
    let name = inputbot_api::names::child_name(&owner.name, component);
    let meta = serde_json::to_value(owner.child_meta(&name, component)).unwrap_or(Value::Null);
    json!({
        "apiVersion": format!("{KEDA_GROUP}/v1alpha1"),
        "kind": "ScaledObject",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": min,
            "maxReplicaCount": max,
            "triggers": [{
                "type": "kafka",
                "metadata": {
                    "bootstrapServers": trigger.bootstrap,
                    "consumerGroup": trigger.consumer_group,
                    "topic": trigger.topic,
                    "lagThreshold": trigger.lag_threshold.to_string(),
                    // Never more replicas than partitions: idle consumers only cost.
                    "allowIdleConsumers": "false",
                },
            }],
        },
    })
}
