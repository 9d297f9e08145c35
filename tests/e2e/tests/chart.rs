//! The Helm chart `charts/inputbot-operator`, checked with the real `helm` binary
//! (`INPUTBOT_HELM`, built by `scripts/tools.sh`) and the harness's real API server:
//!
//! - offline: the chart's CRD copies equal `crds/`, every value is documented in
//!   docs/install.md and has a schema, `helm lint --strict`, `helm template` of the defaults and
//!   of every optional part, the schema rejecting wrong types and unknown keys, every operator
//!   env var set by the Deployment;
//! - against the API server: a server-side dry run of everything the chart renders, and the
//!   RBAC proof — the chart's ServiceAccount can do what the operator does and nothing more
//!   (SubjectAccessReviews, plus real requests made while impersonating it); and a real
//!   `helm install`, `upgrade` (a changed value rolls the operator) and `uninstall`.
//!
//! Needs the harness (or `KUBECONFIG`) for the cluster tests: see docs/testing.md.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use inputbot_e2e::{
    Cluster, TestNamespace, ensure_project_crds, gvk_of, repo_root, setting, unique_suffix,
    yaml_documents, yaml_files,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::Scope;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

// ------------------------------------------------------------------------- helpers ---

fn chart_dir() -> PathBuf {
    repo_root().join("charts/inputbot-operator")
}

fn helm_binary() -> String {
    setting("INPUTBOT_HELM").unwrap_or_else(|| {
        panic!(
            "INPUTBOT_HELM is not set: no helm binary to test the chart with. Run \
             `scripts/tools.sh helm` and `eval \"$(scripts/tools.sh env)\"` (or start the \
             harness, which exports it); see docs/testing.md."
        )
    })
}

/// Runs helm with `args`; returns (success, stdout, stderr). Helm's own state goes to a
/// throwaway directory so that no test reads or writes the user's helm configuration.
fn helm(args: &[&str]) -> (bool, String, String) {
    let home = std::env::temp_dir().join(format!("inputbot-chart-helm-{}", std::process::id()));
    let output = Command::new(helm_binary())
        .args(args)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run helm ({}): {e}", helm_binary()));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A values file with `yaml` in it, removed when dropped.
struct ValuesFile(PathBuf);

impl ValuesFile {
    fn new(yaml: &str) -> ValuesFile {
        let path = std::env::temp_dir().join(format!("inputbot-chart-{}.yaml", unique_suffix()));
        std::fs::write(&path, yaml).expect("writing a values file");
        ValuesFile(path)
    }
}

impl Drop for ValuesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `helm template` of the chart as release `release` in `namespace` with `values`; the error
/// is helm's stderr.
fn try_template(release: &str, namespace: &str, values: &str) -> Result<Vec<Value>, String> {
    let file = ValuesFile::new(values);
    let chart = chart_dir();
    let (ok, out, err) = helm(&[
        "template",
        release,
        chart.to_str().expect("a UTF-8 path"),
        "--namespace",
        namespace,
        "--values",
        file.0.to_str().expect("a UTF-8 path"),
    ]);
    if !ok {
        return Err(err);
    }
    yaml_documents(&out).map_err(|e| format!("helm rendered invalid YAML: {e:#}\n{out}"))
}

fn template(release: &str, namespace: &str, values: &str) -> Vec<Value> {
    try_template(release, namespace, values)
        .unwrap_or_else(|err| panic!("helm template failed with values\n{values}\n{err}"))
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    kinds.sort();
    kinds
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn deployment(docs: &[Value]) -> &Value {
    let found = find(docs, "Deployment");
    assert_eq!(found.len(), 1, "the chart renders one Deployment");
    found[0]
}

fn container(docs: &[Value]) -> &Value {
    &deployment(docs)["spec"]["template"]["spec"]["containers"][0]
}

/// The value of env var `name` of the operator container (`None` when not set; the
/// `valueFrom` object when it has no literal value).
fn env(docs: &[Value], name: &str) -> Option<Value> {
    container(docs)["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| {
            e.get("value")
                .cloned()
                .unwrap_or_else(|| e["valueFrom"].clone())
        })
}

/// Values that turn on every optional part at once.
const EVERYTHING: &str = r#"
watchNamespaces: [team-a, team-b]
kafka:
  bootstrapServers: kafka-0.kafka:9093,kafka-1.kafka:9093
  securityProtocol: SASL_SSL
  saslMechanism: SCRAM-SHA-512
  credentialsSecret: kafka-credentials
  tlsCaSecret: kafka-ca
topics:
  mode: strimzi
  strimzi: {cluster: my-cluster, namespace: kafka}
  defaults: {partitions: 12, replicationFactor: 2, retention: 3d}
concurrency: 4
serviceDomain: svc.cluster.local
leaderElection: {enabled: true, leaseName: ib-lease, leaseDurationSeconds: 15}
logFormat: text
logLevel: debug
replicas: 3
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: ops, effect: NoSchedule}]
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/arch, operator: In, values: [amd64]}]}]
podAnnotations: {example.com/team: platform}
priorityClassName: system-cluster-critical
serviceMonitor: {enabled: true, interval: 15s, labels: {release: prometheus}}
networkPolicy:
  enabled: true
  ingest:
    from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}}]
  metrics:
    from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
  egress:
    restrict: true
    to:
      - to: [{ipBlock: {cidr: 10.0.0.0/8}}]
        ports: [{port: 9093, protocol: TCP}]
"#;

/// The env vars the operator reads (`env = "…"` in its clap definitions).
fn operator_env_vars() -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    for file in ["operator/src/settings.rs", "operator/src/main.rs"] {
        let text = std::fs::read_to_string(repo_root().join(file)).expect("operator source");
        let mut rest = text.as_str();
        while let Some(i) = rest.find("env = \"") {
            rest = &rest[i + 7..];
            let end = rest.find('"').expect("a closing quote");
            vars.insert(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    assert!(
        vars.len() > 20,
        "found only {vars:?} in the operator's settings"
    );
    vars
}

// ---------------------------------------------------------------------- offline ---

#[test]
fn chart_crd_copies_equal_the_generated_crds_byte_for_byte() {
    let generated = yaml_files(&repo_root().join("crds"));
    let copies = yaml_files(&chart_dir().join("files/crds"));
    let names = |files: &[PathBuf]| -> Vec<String> {
        files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert!(!generated.is_empty(), "crds/ has no CRDs");
    assert_eq!(
        names(&generated),
        names(&copies),
        "charts/inputbot-operator/files/crds/ must hold exactly the files of crds/; refresh with \
         `cp crds/*.yaml charts/inputbot-operator/files/crds/`"
    );
    for (g, c) in generated.iter().zip(&copies) {
        assert!(
            std::fs::read(g).unwrap() == std::fs::read(c).unwrap(),
            "{} differs from {}; refresh with `cp crds/*.yaml charts/inputbot-operator/files/crds/`",
            c.display(),
            g.display()
        );
    }
}

/// The dotted keys of values.yaml a user sets: nested objects of the chart's own are walked,
/// Kubernetes-typed values (resources, affinity, maps, lists) are keys of their own.
fn value_keys(values: &Value, schema: &Value, prefix: &str, out: &mut Vec<String>) {
    let Value::Object(map) = values else { return };
    for (key, value) in map {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let sub = &schema["properties"][key];
        let chart_object = value.is_object()
            && sub["additionalProperties"] == json!(false)
            && !matches!(path.as_str(), "resources" | "affinity");
        if chart_object {
            value_keys(value, sub, &path, out);
        } else {
            out.push(path);
        }
    }
}

fn values_and_schema() -> (Value, Value) {
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml");
    let values = yaml_documents(&values)
        .expect("values.yaml parses")
        .remove(0);
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).expect("the schema"),
    )
    .expect("values.schema.json parses");
    (values, schema)
}

#[test]
fn every_key_of_values_yaml_is_in_the_install_docs_reference() {
    let (values, schema) = values_and_schema();
    let mut keys = Vec::new();
    value_keys(&values, &schema, "", &mut keys);
    assert!(keys.len() > 40, "too few keys: {keys:?}");
    let docs = std::fs::read_to_string(repo_root().join("docs/install.md")).expect("install.md");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !docs.contains(&format!("| `{k}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/install.md's values reference lacks rows (`| `key` |`) for {missing:?}"
    );
}

#[test]
fn every_key_of_values_yaml_has_a_schema_and_every_schema_property_a_default() {
    fn walk(values: &Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
        let (Value::Object(v), Some(props)) = (values, schema["properties"].as_object()) else {
            return;
        };
        for key in v.keys() {
            if !props.contains_key(key) {
                errors.push(format!("{path}{key}: in values.yaml, not in the schema"));
            }
        }
        // Kubernetes-typed values: their fields are optional, with no default each.
        if matches!(path, "resources." | "affinity.") {
            return;
        }
        for (key, sub) in props {
            if key == "global" && path.is_empty() {
                continue;
            }
            match v.get(key) {
                None => errors.push(format!("{path}{key}: in the schema, not in values.yaml")),
                Some(value) => walk(value, sub, &format!("{path}{key}."), errors),
            }
        }
    }
    let (values, schema) = values_and_schema();
    let mut errors = Vec::new();
    walk(&values, &schema, "", &mut errors);
    assert!(
        errors.is_empty(),
        "values.yaml and values.schema.json disagree: {errors:#?}"
    );
}

#[test]
fn helm_lint_strict_passes_for_the_defaults_and_every_optional_part() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let (ok, out, err) = helm(&["lint", "--strict", chart]);
    assert!(ok, "helm lint --strict failed:\n{out}\n{err}");
    let file = ValuesFile::new(EVERYTHING);
    let (ok, out, err) = helm(&["lint", "--strict", chart, "-f", file.0.to_str().unwrap()]);
    assert!(
        ok,
        "helm lint --strict with every part on failed:\n{out}\n{err}"
    );
}

#[test]
fn default_values_render_cluster_wide_rbac_kept_crds_and_a_hardened_deployment() {
    let docs = template("ib", "inputbot-system", "{}");
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
    );
    // CRDs: the generated spec unchanged, kept on uninstall.
    for crd in find(&docs, "CustomResourceDefinition") {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{}",
            crd["metadata"]["name"]
        );
        let file = repo_root().join(format!(
            "crds/{}_{}.yaml",
            crd["spec"]["group"].as_str().unwrap(),
            crd["spec"]["names"]["plural"].as_str().unwrap()
        ));
        let generated = yaml_documents(&std::fs::read_to_string(&file).unwrap())
            .unwrap()
            .remove(0);
        assert_eq!(crd["spec"], generated["spec"], "{}", file.display());
        assert_eq!(crd["metadata"]["name"], generated["metadata"]["name"]);
    }
    let d = deployment(&docs);
    assert_eq!(d["metadata"]["namespace"], "inputbot-system");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "ib-inputbot-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(
        pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"],
        d["spec"]["selector"]["matchLabels"],
        "the default topology spread selects the operator's own pods"
    );
    let c = container(&docs);
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(
        env(&docs, "POD_NAME").unwrap()["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env(&docs, "POD_NAMESPACE").unwrap()["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env(&docs, "INPUTBOT_RUNTIME_IMAGE").unwrap(),
        "inputbot/inputbot:0.1.0"
    );
    assert_eq!(env(&docs, "INPUTBOT_TOPIC_MODE").unwrap(), "admin");
    assert_eq!(env(&docs, "INPUTBOT_LEADER_ELECT").unwrap(), "true");
    assert_eq!(env(&docs, "INPUTBOT_WATCH_NAMESPACES"), None);
    // Admin mode: no KafkaTopic rule; never a wildcard or a Secret.
    let rules = &find(&docs, "ClusterRole")[0]["rules"];
    let text = rules.to_string();
    assert!(!text.contains("kafka.strimzi.io"), "{text}");
    assert!(!text.contains('*'), "{text}");
    assert!(!text.contains("secrets"), "{text}");
    assert!(!text.contains("apiextensions"), "{text}");
}

#[test]
fn every_optional_part_renders_and_every_operator_env_var_is_set() {
    let docs = template("ib", "ops", EVERYTHING);
    let k = kinds(&docs);
    for (kind, n) in [
        ("ClusterRole", 0),
        ("ClusterRoleBinding", 0),
        // a Role per watched namespace, the KafkaTopic Role in `kafka`, the Lease Role
        ("Role", 4),
        ("RoleBinding", 4),
        ("NetworkPolicy", 4),
        ("ServiceMonitor", 1),
    ] {
        assert_eq!(
            k.iter().filter(|x| *x == kind).count(),
            n,
            "{kind} in {k:?}"
        );
    }
    for var in operator_env_vars() {
        assert!(
            env(&docs, &var).is_some(),
            "the chart never sets {var}, which the operator reads"
        );
    }
    assert_eq!(
        env(&docs, "INPUTBOT_WATCH_NAMESPACES").unwrap(),
        "team-a,team-b"
    );
    assert_eq!(
        env(&docs, "INPUTBOT_KAFKA_SASL_PASSWORD").unwrap()["secretKeyRef"],
        json!({"name": "kafka-credentials", "key": "password"})
    );
    assert_eq!(
        env(&docs, "INPUTBOT_KAFKA_TLS_CA_FILE").unwrap(),
        "/etc/inputbot/kafka-tls/ca.crt"
    );
    assert_eq!(env(&docs, "INPUTBOT_DEFAULT_PARTITIONS").unwrap(), "12");
    // Namespaced mode: the KafkaTopic rule only in the Strimzi namespace.
    for role in find(&docs, "Role") {
        let ns = role["metadata"]["namespace"].as_str().unwrap();
        let strimzi = role["rules"].to_string().contains("kafkatopics");
        assert_eq!(strimzi, ns == "kafka", "Role in {ns}: {}", role["rules"]);
    }
    // Runtime NetworkPolicies: ingest from the ingress namespace; egress DNS plus Kafka.
    let ingest = find(&docs, "NetworkPolicy")
        .into_iter()
        .find(|p| p["metadata"]["name"] == "ib-inputbot-operator-runtime-ingest")
        .unwrap();
    assert_eq!(ingest["spec"]["ingress"][0]["ports"][0]["port"], 8080);
    assert_eq!(
        ingest["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "ingress-nginx"
    );
    let runtime = find(&docs, "NetworkPolicy")
        .into_iter()
        .find(|p| p["metadata"]["name"] == "ib-inputbot-operator-runtime")
        .unwrap();
    assert_eq!(runtime["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(runtime["spec"]["egress"][0]["ports"][0]["port"], 53);
    assert_eq!(runtime["spec"]["egress"][1]["ports"][0]["port"], 9093);
}

#[test]
fn open_egress_and_no_metrics_peer_render_an_ingress_only_policy() {
    let docs = template(
        "ib",
        "ops",
        "networkPolicy: {enabled: true, namespaces: [bots]}\ncrds: {install: false}\n",
    );
    assert!(find(&docs, "CustomResourceDefinition").is_empty());
    let runtime = find(&docs, "NetworkPolicy")
        .into_iter()
        .find(|p| p["metadata"]["name"] == "ib-inputbot-operator-runtime")
        .unwrap();
    assert_eq!(runtime["metadata"]["namespace"], "bots");
    assert_eq!(runtime["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(runtime["spec"]["ingress"], json!([]));
    assert!(runtime["spec"].get("egress").is_none());
}

#[test]
fn crds_keep_off_drops_the_keep_policy() {
    let docs = template("ib", "ops", "crds: {keep: false}\n");
    for crd in find(&docs, "CustomResourceDefinition") {
        assert!(crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
    }
}

#[test]
fn schema_rejects_a_wrong_type_naming_the_value() {
    let err = try_template("ib", "ops", "replicas: two\n").expect_err("replicas: two renders");
    assert!(err.contains("/replicas"), "{err}");
    let err = try_template("ib", "ops", "leaderElection: {enabled: \"yes\"}\n")
        .expect_err("a string for a boolean renders");
    assert!(err.contains("/leaderElection/enabled"), "{err}");
    let err = try_template("ib", "ops", "topics: {mode: kafka}\n").expect_err("mode kafka");
    assert!(err.contains("/topics/mode"), "{err}");
}

#[test]
fn schema_rejects_an_unknown_key_naming_it() {
    let err = try_template("ib", "ops", "kafka: {bootstrap: x:9092}\n")
        .expect_err("a misspelt kafka key renders");
    assert!(err.contains("bootstrap") && err.contains("/kafka"), "{err}");
    let err = try_template("ib", "ops", "replica: 3\n").expect_err("a top-level typo renders");
    assert!(err.contains("'replica'"), "{err}");
    let err = try_template("ib", "ops", "networkPolicy: {egress: {to: [{too: []}]}}\n")
        .expect_err("a typo deep inside renders");
    assert!(err.contains("too"), "{err}");
}

#[test]
fn template_checks_refuse_replicas_without_leader_election() {
    let err = try_template(
        "ib",
        "ops",
        "replicas: 2\nleaderElection: {enabled: false}\n",
    )
    .expect_err("two writers render");
    assert!(err.contains("leaderElection.enabled"), "{err}");
    let docs = template(
        "ib",
        "ops",
        "replicas: 1\nleaderElection: {enabled: false}\n",
    );
    assert!(
        find(&docs, "Role").is_empty(),
        "no Lease Role without leader election"
    );
}

// ------------------------------------------------------------------ API server ---

/// Server-side applies `doc` (namespaced objects into their own namespace, or `namespace`
/// when they name none), as a dry run or for real.
async fn apply_doc(
    client: &Client,
    namespace: &str,
    doc: &Value,
    dry_run: bool,
) -> anyhow::Result<DynamicObject> {
    let gvk = gvk_of(doc)?;
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    let obj: DynamicObject = serde_json::from_value(doc.clone())?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            obj.namespace().as_deref().unwrap_or(namespace),
            &resource,
        ),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let mut params = PatchParams::apply(inputbot_e2e::FIELD_MANAGER).force();
    params.dry_run = dry_run;
    Ok(api
        .patch(&obj.name_any(), &params, &Patch::Apply(&obj))
        .await?)
}

#[tokio::test]
async fn rendered_manifests_pass_a_server_side_dry_run() {
    let cluster = Cluster::connect().await;
    ensure_project_crds(&cluster.client).await;
    let release_ns = TestNamespace::create(&cluster, "chart-dry").await;
    let team_a = TestNamespace::create(&cluster, "chart-dry-a").await;
    let kafka_ns = TestNamespace::create(&cluster, "chart-dry-kafka").await;
    let everything = EVERYTHING
        .replace("[team-a, team-b]", &format!("[{}]", team_a.name()))
        .replace(
            "namespace: kafka",
            &format!("namespace: {}", kafka_ns.name()),
        );
    for (what, values) in [("defaults", "{}".to_owned()), ("every part", everything)] {
        let release = format!("dry{}", unique_suffix());
        let docs = template(&release, release_ns.name(), &values);
        let mut checked = 0;
        for doc in &docs {
            // The ServiceMonitor's CRD (Prometheus Operator) is not on the harness; its shape
            // is checked by the template tests.
            if doc["kind"] == "ServiceMonitor" {
                continue;
            }
            apply_doc(&cluster.client, release_ns.name(), doc, true)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{what}: the API server refuses {} {}: {}",
                        doc["kind"],
                        doc["metadata"]["name"],
                        inputbot_e2e::api_error_message(&e)
                    )
                });
            checked += 1;
        }
        assert!(checked >= 9, "{what}: only {checked} objects dry-run");
    }
}

/// The chart's RBAC objects applied for real (cluster-scoped ones deleted when dropped).
struct InstalledRbac {
    // A config, not a client: a client is bound to the runtime that made it, which is
    // blocked while this drops.
    config: kube::Config,
    cluster_scoped: Vec<(String, String)>,
}

impl Drop for InstalledRbac {
    fn drop(&mut self) {
        let config = self.config.clone();
        let objects = std::mem::take(&mut self.cluster_scoped);
        let worker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let Ok(client) = Client::try_from(config) else {
                    return;
                };
                for (kind, name) in objects {
                    let r = match kind.as_str() {
                        "ClusterRole" => {
                            Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(client.clone())
                                .delete(&name, &DeleteParams::default())
                                .await
                                .map(|_| ())
                        }
                        _ => Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(
                            client.clone(),
                        )
                        .delete(&name, &DeleteParams::default())
                        .await
                        .map(|_| ()),
                    };
                    if let Err(e) = r {
                        eprintln!("warning: could not delete {kind} {name}: {e}");
                    }
                }
            });
        });
        let _ = worker.join();
    }
}

/// Applies the ServiceAccount and RBAC objects the chart renders with `values` as release
/// `release` in `namespace`.
async fn install_rbac(
    cluster: &Cluster,
    release: &str,
    namespace: &str,
    values: &str,
) -> InstalledRbac {
    let docs = template(release, namespace, values);
    let mut installed = InstalledRbac {
        config: cluster.config.clone(),
        cluster_scoped: Vec::new(),
    };
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if !matches!(
            kind,
            "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
        ) {
            continue;
        }
        if kind.starts_with("Cluster") {
            installed.cluster_scoped.push((
                kind.to_owned(),
                doc["metadata"]["name"].as_str().unwrap().to_owned(),
            ));
        }
        apply_doc(&cluster.client, namespace, doc, false)
            .await
            .unwrap_or_else(|e| panic!("applying {kind}: {e:#}"));
    }
    installed
}

/// Whether the ServiceAccount `sa` of `namespace` may do `verb` on `resource`.
struct Access<'a> {
    client: &'a Client,
    user: String,
    groups: Vec<String>,
}

impl<'a> Access<'a> {
    fn new(client: &'a Client, namespace: &str, sa: &str) -> Access<'a> {
        Access {
            client,
            user: format!("system:serviceaccount:{namespace}:{sa}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    /// `resource` is `group/resource[/subresource]` (`core` for the core group); namespace
    /// empty means all namespaces (or a cluster-scoped resource).
    async fn allowed(&self, verb: &str, resource: &str, namespace: &str) -> bool {
        let mut parts = resource.split('/');
        let group = parts.next().unwrap();
        let res = parts.next().unwrap();
        let sub = parts.next();
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(self.user.clone()),
                groups: Some(self.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(if group == "core" { "" } else { group }.to_owned()),
                    resource: Some(res.to_owned()),
                    subresource: sub.map(str::to_owned),
                    verb: Some(verb.to_owned()),
                    namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .expect("a SubjectAccessReview");
        answer.status.is_some_and(|s| s.allowed)
    }

    /// Asserts every (verb, resource, namespace) is allowed (`want`) or denied.
    async fn expect(&self, want: bool, cases: &[Case]) {
        let mut wrong = Vec::new();
        for (verb, resource, ns) in cases {
            if self.allowed(verb, resource, ns).await != want {
                wrong.push(format!("{verb} {resource} in {ns:?}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} should {} but {}: {wrong:#?}",
            self.user,
            if want { "be allowed" } else { "be denied" },
            if want { "is denied" } else { "is allowed" },
        );
    }
}

/// A (verb, `group/resource[/subresource]`, namespace) to ask about.
type Case = (String, String, String);

fn case(verb: &str, resource: &str, namespace: &str) -> Case {
    (verb.to_owned(), resource.to_owned(), namespace.to_owned())
}

/// What the operator does in a namespace it watches (empty: across all namespaces).
fn operator_actions(ns: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    for kind in ["inputbots", "pipelines", "actionbindings"] {
        for verb in ["get", "list", "watch", "patch", "update"] {
            cases.push(case(verb, &format!("inputbot.dev/{kind}"), ns));
        }
        cases.push(case("patch", &format!("inputbot.dev/{kind}/status"), ns));
        cases.push(case(
            "update",
            &format!("inputbot.dev/{kind}/finalizers"),
            ns,
        ));
    }
    for child in [
        "core/configmaps",
        "core/services",
        "apps/deployments",
        "autoscaling/horizontalpodautoscalers",
        "policy/poddisruptionbudgets",
        "networking.k8s.io/ingresses",
        "keda.sh/scaledobjects",
    ] {
        for verb in ["get", "list", "watch", "create", "patch", "delete"] {
            cases.push(case(verb, child, ns));
        }
    }
    cases.push(case("create", "events.k8s.io/events", ns));
    cases.push(case("patch", "events.k8s.io/events", ns));
    cases
}

/// Things the operator never does, wherever asked.
fn forbidden(own_ns: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    for ns in [own_ns, "", "default"] {
        for verb in ["get", "list", "watch"] {
            cases.push(case(verb, "core/secrets", ns));
        }
        cases.push(case("*", "*/*", ns));
        cases.push(case("create", "core/pods", ns));
        cases.push(case("create", "core/pods/exec", ns));
        cases.push(case("create", "rbac.authorization.k8s.io/roles", ns));
        cases.push(case("create", "rbac.authorization.k8s.io/rolebindings", ns));
        cases.push(case("create", "inputbot.dev/inputbots", ns));
        cases.push(case("delete", "inputbot.dev/inputbots", ns));
    }
    for verb in ["create", "update", "patch", "delete"] {
        cases.push(case(
            verb,
            "apiextensions.k8s.io/customresourcedefinitions",
            "",
        ));
    }
    cases.push(case("delete", "core/namespaces", ""));
    cases.push(case("create", "core/namespaces", ""));
    cases.push(case(
        "escalate",
        "rbac.authorization.k8s.io/clusterroles",
        "",
    ));
    cases.push(case("bind", "rbac.authorization.k8s.io/clusterroles", ""));
    cases.push(case("impersonate", "core/serviceaccounts", ""));
    cases.push(case("create", "coordination.k8s.io/leases", "default"));
    cases
}

/// A client that acts as the ServiceAccount (impersonation by the test's admin).
fn impersonating(cluster: &Cluster, namespace: &str, sa: &str) -> Client {
    let mut config = cluster.config.clone();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{sa}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".into(),
    ]);
    Client::try_from(config).expect("an impersonating client")
}

#[tokio::test]
async fn the_chart_service_account_can_do_what_the_operator_does_and_no_more() {
    let cluster = Cluster::connect().await;
    ensure_project_crds(&cluster.client).await;
    let ns = TestNamespace::create(&cluster, "chart-rbac").await;
    let bots = TestNamespace::create(&cluster, "chart-rbac-bots").await;
    let release = format!("rbac{}", unique_suffix());
    let _rbac = install_rbac(&cluster, &release, ns.name(), "{}").await;
    let sa = format!("{release}-inputbot-operator");
    let access = Access::new(&cluster.client, ns.name(), &sa);

    // Cluster-wide mode: every namespace, and the cluster-wide watches.
    let mut allowed = operator_actions(bots.name());
    allowed.extend(operator_actions(""));
    for verb in ["get", "list", "watch", "create", "patch", "update"] {
        allowed.push(case(verb, "coordination.k8s.io/leases", ns.name()));
    }
    access.expect(true, &allowed).await;
    let mut denied = forbidden(ns.name());
    // Admin mode: no KafkaTopics.
    denied.push(case("create", "kafka.strimzi.io/kafkatopics", bots.name()));
    access.expect(false, &denied).await;

    // The same, proven with real requests made as the ServiceAccount.
    let client = impersonating(&cluster, ns.name(), &sa);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns.name());
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "inputbot-operator"},
        "spec": {"holderIdentity": "chart-test", "leaseDurationSeconds": 12}
    }))
    .unwrap();
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("the ServiceAccount creates its Lease");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), bots.name());
    configmaps
        .patch(
            "chart-test",
            &PatchParams::apply("inputbot-operator").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "chart-test"}, "data": {"a": "b"}
            })),
        )
        .await
        .expect("the ServiceAccount server-side applies a ConfigMap in a bot namespace");
    let bots_api: Api<inputbot_api::InputBot> = Api::all(client.clone());
    bots_api
        .list(&ListParams::default())
        .await
        .expect("the ServiceAccount lists InputBots in all namespaces");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns.name());
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("listing Secrets as the operator must be forbidden, got {other:?}"),
    }
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    match crds
        .delete("inputbots.inputbot.dev", &DeleteParams::default().dry_run())
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("deleting a CRD as the operator must be forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn namespaced_mode_grants_only_the_watched_namespaces_and_the_strimzi_one() {
    let cluster = Cluster::connect().await;
    let ns = TestNamespace::create(&cluster, "chart-nsrbac").await;
    let watched = TestNamespace::create(&cluster, "chart-nsrbac-watched").await;
    let other = TestNamespace::create(&cluster, "chart-nsrbac-other").await;
    let topics = TestNamespace::create(&cluster, "chart-nsrbac-topics").await;
    let release = format!("nsrbac{}", unique_suffix());
    let values = format!(
        "watchNamespaces: [{}]\ntopics: {{mode: strimzi, strimzi: {{namespace: {}}}}}\n",
        watched.name(),
        topics.name()
    );
    let _rbac = install_rbac(&cluster, &release, ns.name(), &values).await;
    let access = Access::new(
        &cluster.client,
        ns.name(),
        &format!("{release}-inputbot-operator"),
    );
    access.expect(true, &operator_actions(watched.name())).await;
    let mut allowed = Vec::new();
    for verb in ["get", "list", "watch", "create", "patch", "delete"] {
        allowed.push(case(verb, "kafka.strimzi.io/kafkatopics", topics.name()));
    }
    allowed.push(case("create", "coordination.k8s.io/leases", ns.name()));
    access.expect(true, &allowed).await;

    // Nothing in an unwatched namespace, nothing cluster-wide, KafkaTopics only in theirs.
    let mut denied = operator_actions(other.name());
    denied.extend(operator_actions(""));
    denied.extend(operator_actions(topics.name()));
    denied.push(case(
        "create",
        "kafka.strimzi.io/kafkatopics",
        watched.name(),
    ));
    denied.extend(forbidden(ns.name()));
    denied.extend([watched.name(), topics.name()].into_iter().flat_map(|n| {
        [
            case("get", "core/secrets", n),
            case("list", "core/secrets", n),
        ]
    }));
    access.expect(false, &denied).await;
}

#[tokio::test]
async fn helm_install_upgrade_and_uninstall_run_against_the_api_server() {
    let cluster = Cluster::connect().await;
    ensure_project_crds(&cluster.client).await;
    let ns = TestNamespace::create(&cluster, "chart-install").await;
    let kubeconfig = setting("KUBECONFIG").expect("KUBECONFIG of the cluster under test");
    let release = format!("inst{}", unique_suffix());
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let target = [
        "--kubeconfig",
        kubeconfig.as_str(),
        "--namespace",
        ns.name(),
    ];
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(target);
        let (ok, out, err) = helm(&all);
        assert!(ok, "helm {args:?} failed:\n{out}\n{err}");
        out
    };
    // The CRDs are already on the cluster, owned by the test suite rather than a release.
    let notes = run(&["install", &release, chart, "--set", "crds.install=false"]);
    assert!(notes.contains("kubectl get inputbot"), "NOTES.txt: {notes}");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(cluster.client.clone(), ns.name());
    let name = format!("{release}-inputbot-operator");
    let before = deployments
        .get(&name)
        .await
        .expect("the operator Deployment");
    assert_eq!(before.spec.as_ref().unwrap().replicas, Some(2));

    run(&[
        "upgrade",
        &release,
        chart,
        "--set",
        "crds.install=false",
        "--set",
        "logFormat=text",
    ]);
    let after = deployments
        .get(&name)
        .await
        .expect("the operator Deployment");
    assert!(
        after.metadata.generation > before.metadata.generation,
        "a changed value changes the pod template, so the Deployment rolls"
    );
    let env = after.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "INPUTBOT_LOG_FORMAT" && e.value.as_deref() == Some("text"))
    );

    run(&["uninstall", &release]);
    assert!(deployments.get_opt(&name).await.unwrap().is_none());
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(cluster.client.clone());
    assert!(
        roles.get_opt(&name).await.unwrap().is_none(),
        "uninstall removes the ClusterRole"
    );
}
