//! The ingest Ingress, when the bot sets `spec.ingest.expose`: one path per webhook source,
//! all to the ingest Service.

use inputbot_api::bot::Expose;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};

use super::Owner;

/// The Ingress routing `expose.host` + each webhook path to the component's Service.
pub fn ingress(owner: &Owner, component: &str, expose: &Expose, paths: &[String]) -> Ingress {
    let name = inputbot_api::names::child_name(&owner.name, component);
    let mut meta = owner.child_meta(&name, component);
    if !expose.annotations.is_empty() {
        meta.annotations = Some(expose.annotations.clone());
    }
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: name.clone(),
            port: Some(ServiceBackendPort {
                name: Some("http".into()),
                ..ServiceBackendPort::default()
            }),
        }),
        ..IngressBackend::default()
    };
    Ingress {
        metadata: meta,
        spec: Some(IngressSpec {
            ingress_class_name: expose.ingress_class_name.clone(),
            tls: expose.tls.as_ref().map(|tls| {
                vec![IngressTLS {
                    hosts: Some(vec![expose.host.clone()]),
                    secret_name: Some(tls.secret_name.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(expose.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: paths
                        .iter()
                        .map(|p| HTTPIngressPath {
                            path: Some(p.clone()),
                            path_type: "Exact".into(),
                            backend: backend.clone(),
                        })
                        .collect(),
                }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }
}
