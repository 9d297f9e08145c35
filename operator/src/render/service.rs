//! The ingest Service (webhooks reach the pods through it) and, with more than one replica,
//! its PodDisruptionBudget (a drain never takes every intake pod at once).

use k8s_openapi::api::{
    core::v1::{Service, ServicePort, ServiceSpec},
    policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
};
use k8s_openapi::apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString};

use super::{Owner, RUNTIME_PORT};

/// The ClusterIP Service of a component.
pub fn service(owner: &Owner, component: &str) -> Service {
    let name = inputbot_api::names::child_name(&owner.name, component);
    Service {
        metadata: owner.child_meta(&name, component),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(owner.selector_labels(component)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: RUNTIME_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A budget allowing one pod of the component down at a time.
pub fn disruption_budget(owner: &Owner, component: &str) -> PodDisruptionBudget {
    let name = inputbot_api::names::child_name(&owner.name, component);
    PodDisruptionBudget {
        metadata: owner.child_meta(&name, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(owner.selector_labels(component)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}
