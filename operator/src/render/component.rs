//! A runtime component: the ConfigMap holding its resolved config and the Deployment running
//! the runtime image in its role, mounting that config and the Secrets it references.
//!
//! Secret values never enter the ConfigMap: the config names Secrets (`secretRef: {name,
//! key}`), and each named Secret is mounted read-only at `/var/run/inputbot/secrets/<name>`
//! with only the referenced keys, where the runtime reads `<name>/<key>`.

use std::collections::{BTreeMap, BTreeSet};

use inputbot_api::{common::Workload, config::ComponentConfig};
use k8s_openapi::api::{
    apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
    core::v1::{
        Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
        EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
        PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
        SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
    },
};
use k8s_openapi::apimachinery::pkg::{
    api::resource::Quantity, apis::meta::v1::LabelSelector, apis::meta::v1::ObjectMeta,
    util::intstr::IntOrString,
};
use serde_json::Value;

use super::{CONFIG_HASH_ANNOTATION, Owner, RUNTIME_PORT, digest};
use crate::settings::Settings;

/// Where the config file is mounted.
pub const CONFIG_DIR: &str = "/etc/inputbot";
/// The config file's key in the ConfigMap.
pub const CONFIG_KEY: &str = "component.json";
/// Where Secrets are mounted, one directory per Secret.
pub const SECRETS_DIR: &str = "/var/run/inputbot/secrets";
/// Where the Kafka CA is mounted when TLS is configured.
pub const KAFKA_CA_DIR: &str = "/var/run/inputbot/kafka-ca";
/// UID and GID the runtime runs as (the image's non-root user).
pub const RUNTIME_UID: i64 = 65532;

/// What a component needs besides its config.
pub struct ComponentSpec<'a> {
    /// The owning resource.
    pub owner: &'a Owner,
    /// `ingest`, `poller`, `process` or `act` (the Deployment is `<name>-<component>`).
    pub component: &'static str,
    /// The runtime subcommand: `ingest`, `process` or `act`.
    pub role: &'static str,
    /// The resolved config.
    pub config: &'a ComponentConfig,
    /// Replicas (already capped) — ignored by the autoscaler once one exists.
    pub replicas: i32,
    /// Whether an autoscaler owns the replica count (then `replicas` is left out of the apply,
    /// so the autoscaler's choice is not fought).
    pub autoscaled: bool,
    /// `Recreate` instead of a rolling update: never two pods at once (poll and schedule).
    pub singleton: bool,
    /// Resources of the container.
    pub workload: Option<&'a Workload>,
}

/// The ConfigMap and Deployment of a component.
pub fn render(spec: &ComponentSpec<'_>, settings: &Settings) -> (ConfigMap, Deployment) {
    let name = inputbot_api::names::child_name(&spec.owner.name, spec.component);
    let config_json =
        serde_json::to_value(spec.config).expect("the resolved config serializes to JSON");
    let config_text = serde_json::to_string_pretty(&config_json).expect("a JSON value serializes");
    let config_hash = digest(&config_json);
    let secrets = secret_refs(&config_json);

    let configmap = ConfigMap {
        metadata: spec.owner.child_meta(&name, spec.component),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), config_text)])),
        ..ConfigMap::default()
    };

    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("64Mi".into())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    ];
    for (i, (secret, keys)) in secrets.iter().enumerate() {
        let volume = format!("secret-{i}");
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(
                    keys.iter()
                        .map(|k| KeyToPath {
                            key: k.clone(),
                            path: k.clone(),
                            ..KeyToPath::default()
                        })
                        .collect(),
                ),
                default_mode: Some(0o440),
                optional: Some(false),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: format!("{SECRETS_DIR}/{secret}"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let mut env = kafka_env(settings);
    if let Some(ca) = &settings.kafka.tls_ca_secret {
        volumes.push(Volume {
            name: "kafka-ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.clone()),
                items: Some(vec![KeyToPath {
                    key: "ca.crt".into(),
                    path: "ca.crt".into(),
                    ..KeyToPath::default()
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "kafka-ca".into(),
            mount_path: KAFKA_CA_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        env.push(literal(
            "INPUTBOT_KAFKA_TLS_CA_FILE",
            &format!("{KAFKA_CA_DIR}/ca.crt"),
        ));
    }
    for (var, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        env.push(EnvVar {
            name: var.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }

    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    let container = Container {
        name: "runtime".into(),
        image: Some(settings.runtime_image.clone()),
        image_pull_policy: Some(settings.runtime_image_pull_policy.clone()),
        args: Some(args(spec.role)),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: RUNTIME_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(env),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        resources: Some(resources(spec.workload)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUNTIME_UID),
            run_as_group: Some(RUNTIME_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    let strategy = if spec.singleton {
        DeploymentStrategy {
            type_: Some("Recreate".into()),
            ..DeploymentStrategy::default()
        }
    } else {
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_unavailable: Some(IntOrString::Int(0)),
                max_surge: Some(IntOrString::Int(1)),
            }),
        }
    };
    let deployment = Deployment {
        metadata: spec.owner.child_meta(&name, spec.component),
        spec: Some(DeploymentSpec {
            replicas: (!spec.autoscaled).then_some(spec.replicas),
            revision_history_limit: Some(3),
            selector: LabelSelector {
                match_labels: Some(spec.owner.selector_labels(spec.component)),
                ..LabelSelector::default()
            },
            strategy: Some(strategy),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(spec.owner.labels(spec.component)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_owned(),
                        config_hash,
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    // The runtime never talks to the Kubernetes API.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        fs_group: Some(RUNTIME_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    (configmap, deployment)
}

/// The runtime's command line in a role: the contract between operator and runtime.
pub fn args(role: &str) -> Vec<String> {
    [
        "--log-format",
        "json",
        role,
        "--config",
        &format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        "--secrets-dir",
        SECRETS_DIR,
        "--listen",
        &format!("0.0.0.0:{RUNTIME_PORT}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn literal(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn kafka_env(settings: &Settings) -> Vec<EnvVar> {
    let k = &settings.kafka;
    let mut env = vec![
        literal("INPUTBOT_KAFKA_BOOTSTRAP", &k.bootstrap),
        literal("INPUTBOT_KAFKA_SECURITY_PROTOCOL", &k.security_protocol),
    ];
    if let Some(m) = &k.sasl_mechanism {
        env.push(literal("INPUTBOT_KAFKA_SASL_MECHANISM", m));
    }
    if let Some(secret) = &k.credentials_secret {
        for (var, key) in [
            ("INPUTBOT_KAFKA_SASL_USERNAME", "username"),
            ("INPUTBOT_KAFKA_SASL_PASSWORD", "password"),
        ] {
            env.push(EnvVar {
                name: var.into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.clone(),
                        key: key.into(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
    }
    env
}

fn resources(workload: Option<&Workload>) -> ResourceRequirements {
    if let Some(r) = workload.and_then(|w| w.resources.clone()) {
        return r;
    }
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), q("50m")),
            ("memory".to_owned(), q("64Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), q("256Mi"))])),
        ..ResourceRequirements::default()
    }
}

/// Every Secret the config references, with the keys used: any object under a field whose
/// name ends in `secretRef`/`SecretRef` (or `SecretRefs`, a list) with `name` and `key`.
pub fn secret_refs(config: &Value) -> BTreeMap<String, BTreeSet<String>> {
    fn add(out: &mut BTreeMap<String, BTreeSet<String>>, v: &Value) {
        if let (Some(name), Some(key)) = (
            v.get("name").and_then(Value::as_str),
            v.get("key").and_then(Value::as_str),
        ) {
            out.entry(name.to_owned())
                .or_default()
                .insert(key.to_owned());
        }
    }
    fn walk(out: &mut BTreeMap<String, BTreeSet<String>>, v: &Value) {
        match v {
            Value::Object(map) => {
                for (field, value) in map {
                    let lower = field.to_ascii_lowercase();
                    if lower.ends_with("secretref") {
                        add(out, value);
                    } else if lower.ends_with("secretrefs") {
                        for item in value.as_array().into_iter().flatten() {
                            add(out, item);
                        }
                    }
                    walk(out, value);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(out, i)),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk(&mut out, config);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_the_secrets_of_jwt_api_key_and_oauth2_so_they_are_mounted() {
        let config = json!({
            "sources": [
                {"webhook": {"auth": {"jwt": {"keySecretRefs": [{"name": "issuer", "key": "pem"}]}}}},
                {"webhook": {"auth": {"jwt": {"sharedSecretRefs": [{"name": "issuer", "key": "hs"}]}}}},
                {"webhook": {"auth": {"apiKey": {"secretRefs": [{"name": "keys", "key": "a"}, {"name": "keys", "key": "b"}]}}}},
                {"poll": {"oauth2": {"clientIdSecretRef": {"name": "crm", "key": "id"},
                                     "clientSecretRef": {"name": "crm", "key": "secret"}}}}
            ]
        });
        assert_eq!(
            secret_refs(&config),
            BTreeMap::from([
                ("crm".into(), BTreeSet::from(["id".into(), "secret".into()])),
                ("issuer".into(), BTreeSet::from(["hs".into(), "pem".into()])),
                ("keys".into(), BTreeSet::from(["a".into(), "b".into()])),
            ])
        );
    }

    #[test]
    fn finds_every_secret_reference_in_a_config() {
        let config = json!({
            "sources": [{"webhook": {"auth": {"hmac": {
                "secretRef": {"name": "gh", "key": "k1"},
                "additionalSecretRefs": [{"name": "gh", "key": "k0"}]}}}}],
            "action": {"http": {"headers": {"Authorization": {"secretRef": {"name": "crm", "key": "token"}}}},
                       "slack": {"webhookSecretRef": {"name": "chat", "key": "url"}}}
        });
        let refs = secret_refs(&config);
        assert_eq!(
            refs,
            BTreeMap::from([
                ("chat".into(), BTreeSet::from(["url".into()])),
                ("crm".into(), BTreeSet::from(["token".into()])),
                ("gh".into(), BTreeSet::from(["k0".into(), "k1".into()])),
            ])
        );
    }
}
