//! Test support for inputbot's end-to-end suites.
//!
//! The suites run against a real Kubernetes API server and a real Kafka broker:
//!
//! - the local harness (`scripts/harness.sh start`, then `eval "$(scripts/harness.sh env)"`),
//!   which is what `scripts/test.sh` does;
//! - or any cluster named by `KUBECONFIG` (kind, k3d, a real one) plus a broker named by
//!   `KAFKA_BOOTSTRAP`.
//!
//! Nothing here defaults to `~/.kube/config`: without `KUBECONFIG` (or `INPUTBOT_HARNESS_DIR`
//! pointing at a running harness) every test fails, loudly, with the commands that start one.
//!
//! Each test gets its own namespace ([`TestNamespace`]) that is deleted when the test ends,
//! also when it panics; a failing test first prints the namespace's events, pods and every
//! other object in it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, ResourceExt};
use serde_json::Value;

pub mod helm;
pub mod identity;
pub mod images;
pub mod operator;
pub mod pod;
pub mod receiver;
pub mod runtime;
pub mod smtp;
pub mod stream;

/// The field manager of every server-side apply made by the tests.
pub const FIELD_MANAGER: &str = "inputbot-e2e";

/// Label put on every namespace a test creates, so leftovers can be found and removed.
pub const NAMESPACE_LABEL: &str = "inputbot.dev/e2e";

/// How to get a cluster and a broker, printed whenever one is missing.
pub const HOW_TO_RUN: &str = "\
The e2e suite needs a real Kubernetes API server and a real Kafka broker. Either:
  * run the whole thing:        scripts/test.sh
  * or start the local harness: scripts/tools.sh && scripts/harness.sh start
                                eval \"$(scripts/harness.sh env)\"
                                cargo test -p inputbot-e2e
                                scripts/harness.sh stop
  * or use your own cluster:    KUBECONFIG=/path/to/kubeconfig KAFKA_BOOTSTRAP=host:port \\
                                cargo test -p inputbot-e2e
See docs/testing.md.";

/// The directory of the Cargo workspace.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// The variables of a running harness (`$INPUTBOT_HARNESS_DIR/harness.env`), if one is named.
fn harness_env() -> Option<HashMap<String, String>> {
    let dir = std::env::var_os("INPUTBOT_HARNESS_DIR")?;
    let text = std::fs::read_to_string(Path::new(&dir).join("harness.env")).ok()?;
    let vars = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.trim_matches('\'').trim_matches('"').to_string(),
            )
        })
        .collect();
    Some(vars)
}

/// A variable from the environment, or else from a running harness's `harness.env` — the
/// latter only while the tests target that harness (`KUBECONFIG` unset or the harness's own),
/// so that a harness left running never lends its settings to a test of another cluster.
pub fn setting(name: &str) -> Option<String> {
    if let Ok(v) = std::env::var(name)
        && !v.is_empty()
    {
        return Some(v);
    }
    let vars = harness_env()?;
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_default();
    if !kubeconfig.is_empty() && vars.get("KUBECONFIG") != Some(&kubeconfig) {
        return None;
    }
    vars.get(name).cloned()
}

/// The Kafka bootstrap servers (`KAFKA_BOOTSTRAP`). Panics with [`HOW_TO_RUN`] when unset.
pub fn kafka_bootstrap() -> String {
    setting("KAFKA_BOOTSTRAP").unwrap_or_else(|| {
        panic!("KAFKA_BOOTSTRAP is not set: no Kafka broker to test against.\n{HOW_TO_RUN}")
    })
}

/// A connection to the cluster under test.
#[derive(Clone)]
pub struct Cluster {
    /// A client bound to the calling test's runtime.
    pub client: Client,
    /// The configuration it was made from (to make more clients, e.g. on another runtime).
    pub config: Config,
}

impl Cluster {
    /// Connects to the cluster named by `KUBECONFIG` (or by a running harness). Panics with
    /// [`HOW_TO_RUN`] when there is none or it does not answer.
    pub async fn connect() -> Cluster {
        let config = match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            Some(_) => Config::from_kubeconfig(&KubeConfigOptions::default())
                .await
                .unwrap_or_else(|e| panic!("cannot load KUBECONFIG: {e}\n{HOW_TO_RUN}")),
            None => {
                let path = harness_env().and_then(|v| v.get("KUBECONFIG").cloned()).unwrap_or_else(|| {
                    panic!(
                        "KUBECONFIG is not set (and no running harness in INPUTBOT_HARNESS_DIR): \
                         no cluster to test against. The suite never falls back to ~/.kube/config.\n{HOW_TO_RUN}"
                    )
                });
                let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
                    panic!("cannot read the harness kubeconfig {path}: {e}\n{HOW_TO_RUN}")
                });
                Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .unwrap_or_else(|e| panic!("bad harness kubeconfig {path}: {e}\n{HOW_TO_RUN}"))
            }
        };
        let cluster_url = config.cluster_url.clone();
        let client = Client::try_from(config.clone())
            .unwrap_or_else(|e| panic!("cannot build a client for {cluster_url}: {e}"));
        if let Err(e) = client.apiserver_version().await {
            panic!("the API server at {cluster_url} does not answer: {e}\n{HOW_TO_RUN}");
        }
        Cluster { client, config }
    }
}

/// A short random-enough suffix for names (time, pid and a counter; no RNG dependency).
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // FNV-1a over the three, printed in base 36: 8 characters valid in any DNS label.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in nanos
        .to_le_bytes()
        .iter()
        .chain(std::process::id().to_le_bytes().iter())
        .chain(n.to_le_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let alphabet = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..8)
        .map(|i| alphabet[((h >> (i * 6)) % 36) as usize] as char)
        .collect()
}

/// Polls `f` every 250 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ----------------------------------------------------------------------------- YAML ---

/// The `.yaml`/`.yml` files of a directory, sorted; empty when it does not exist.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    files
}

/// The documents of a multi-document YAML text, without empty ones.
pub fn yaml_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize as _;
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).with_context(|| format!("YAML document {}", i + 1))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The group/version/kind of a manifest.
pub fn gvk_of(doc: &Value) -> anyhow::Result<GroupVersionKind> {
    let api_version = doc["apiVersion"]
        .as_str()
        .context("manifest without apiVersion")?;
    let kind = doc["kind"].as_str().context("manifest without kind")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    Ok(GroupVersionKind::gvk(group, version, kind))
}

/// Server-side applies one manifest. Namespaced objects go to `namespace` (which replaces any
/// namespace the manifest names); cluster-scoped ones ignore it.
pub async fn apply(
    client: &Client,
    namespace: Option<&str>,
    doc: &Value,
) -> anyhow::Result<DynamicObject> {
    let gvk = gvk_of(doc)?;
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the API server does not serve {}", describe_gvk(&gvk)))?;
    let mut obj: DynamicObject =
        serde_json::from_value(doc.clone()).context("not a Kubernetes object")?;
    let name = obj.name_any();
    let api: Api<DynamicObject> = match (caps.scope, namespace) {
        (Scope::Namespaced, Some(ns)) => {
            obj.metadata.namespace = Some(ns.to_string());
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        (Scope::Namespaced, None) => {
            let ns = obj
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            Api::namespaced_with(client.clone(), &ns, &resource)
        }
        (Scope::Cluster, _) => {
            obj.metadata.namespace = None;
            Api::all_with(client.clone(), &resource)
        }
    };
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .with_context(|| format!("applying {} {name}", gvk.kind))
}

/// Applies every document of a YAML text, in order.
pub async fn apply_yaml(
    client: &Client,
    namespace: Option<&str>,
    text: &str,
) -> anyhow::Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for doc in yaml_documents(text)? {
        applied.push(apply(client, namespace, &doc).await?);
    }
    Ok(applied)
}

fn describe_gvk(gvk: &GroupVersionKind) -> String {
    if gvk.group.is_empty() {
        format!("{}/{}", gvk.version, gvk.kind)
    } else {
        format!("{}/{} {}", gvk.group, gvk.version, gvk.kind)
    }
}

/// The message the API server gave for a failed request (`Status.message`), or the error text.
pub fn api_error_message(err: &anyhow::Error) -> String {
    for cause in err.chain() {
        if let Some(kube::Error::Api(status)) = cause.downcast_ref::<kube::Error>() {
            return status.message.clone();
        }
    }
    format!("{err:#}")
}

// ------------------------------------------------------------------------------ CRDs ---

/// Installs the CRDs in `files` (server-side apply) and waits until each is Established.
/// Returns their names (`plural.group`).
pub async fn install_crds(client: &Client, files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for doc in yaml_documents(&text).with_context(|| format!("parsing {}", file.display()))? {
            if doc["kind"] != "CustomResourceDefinition" {
                continue;
            }
            let crd: CustomResourceDefinition = serde_json::from_value(doc)
                .with_context(|| format!("{}: not a CRD", file.display()))?;
            let name = crd.name_any();
            crds.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await
            .with_context(|| format!("installing CRD {name} from {}", file.display()))?;
            names.push(name);
        }
    }
    for name in &names {
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(crds.clone(), name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not Established after 60s"))?
        .with_context(|| format!("watching CRD {name}"))?;
    }
    // Discovery lags a moment behind Established; wait until every kind is served.
    for name in &names {
        let crd = crds.get(name).await?;
        let version = crd
            .spec
            .versions
            .iter()
            .find(|v| v.served)
            .map(|v| v.name.clone())
            .unwrap_or_default();
        let gvk = GroupVersionKind::gvk(&crd.spec.group, &version, &crd.spec.names.kind);
        let deadline = Instant::now() + Duration::from_secs(30);
        while kube::discovery::pinned_kind(client, &gvk).await.is_err() {
            if Instant::now() > deadline {
                bail!(
                    "CRD {name} is Established but {} is not discoverable",
                    describe_gvk(&gvk)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(names)
}

/// The project's CRD files (`crds/*.yaml`).
pub fn project_crd_files() -> Vec<PathBuf> {
    yaml_files(&repo_root().join("crds"))
}

/// Where the third-party CRDs (Strimzi `KafkaTopic`, KEDA `ScaledObject`) are kept: test data
/// beside the repository (`../shared/thirdparty-crds`), or `INPUTBOT_THIRDPARTY_CRDS`.
pub fn thirdparty_crd_dir() -> PathBuf {
    match std::env::var_os("INPUTBOT_THIRDPARTY_CRDS") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("../shared/thirdparty-crds"),
    }
}

static PROJECT_CRDS: tokio::sync::OnceCell<Vec<String>> = tokio::sync::OnceCell::const_new();
static THIRDPARTY_CRDS: tokio::sync::OnceCell<Vec<String>> = tokio::sync::OnceCell::const_new();

/// Installs the project's CRDs once per test process. Panics when `crds/` has none.
pub async fn ensure_project_crds(client: &Client) -> &'static [String] {
    PROJECT_CRDS
        .get_or_init(|| async {
            let files = project_crd_files();
            assert!(
                !files.is_empty(),
                "no CRDs in {}: they are generated from the api crate (`inputbot-operator crds`); \
                 the e2e suite cannot run without them",
                repo_root().join("crds").display()
            );
            install_crds(client, &files)
                .await
                .unwrap_or_else(|e| panic!("installing the project's CRDs failed: {e:#}"))
        })
        .await
}

/// Installs the third-party CRDs once per test process. Panics when they cannot be found.
pub async fn ensure_thirdparty_crds(client: &Client) -> &'static [String] {
    THIRDPARTY_CRDS
        .get_or_init(|| async {
            let dir = thirdparty_crd_dir();
            let files = yaml_files(&dir);
            assert!(
                !files.is_empty(),
                "no third-party CRDs in {} (Strimzi KafkaTopic, KEDA ScaledObject): they are test \
                 data kept beside the repository; set INPUTBOT_THIRDPARTY_CRDS to a directory holding them",
                dir.display()
            );
            install_crds(client, &files)
                .await
                .unwrap_or_else(|e| panic!("installing the third-party CRDs from {} failed: {e:#}", dir.display()))
        })
        .await
}

// ------------------------------------------------------------------------ namespace ---

/// A namespace of one test: created with a random suffix, deleted when dropped (also when the
/// test panics, after its state was printed). `INPUTBOT_E2E_KEEP_NAMESPACES=1` keeps them.
pub struct TestNamespace {
    name: String,
    config: Config,
}

impl TestNamespace {
    /// Creates `<prefix>-<suffix>` and waits until its `default` ServiceAccount exists (when
    /// the cluster has a controller-manager, pods cannot be created before).
    pub async fn create(cluster: &Cluster, prefix: &str) -> TestNamespace {
        let prefix: String = prefix.chars().take(40).collect();
        let name = format!("{}-{}", prefix.trim_end_matches('-'), unique_suffix());
        let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {NAMESPACE_LABEL: "true"}}
        }))
        .expect("a namespace");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        let guard = TestNamespace {
            name,
            config: cluster.config.clone(),
        };
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(cluster.client.clone(), &guard.name);
        wait_for(
            "the namespace's default ServiceAccount",
            Duration::from_secs(60),
            || async { sas.get_opt("default").await.ok().flatten() },
        )
        .await;
        guard
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A readable account of the namespace: events, pods, then every other object in it.
    pub async fn dump(&self, client: &Client) -> String {
        dump_namespace(client, &self.name).await
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let keep = std::env::var("INPUTBOT_E2E_KEEP_NAMESPACES").is_ok_and(|v| v == "1");
        let name = self.name.clone();
        let config = self.config.clone();
        // Drop may run inside the test's runtime, where no other runtime can block: do the
        // work on a thread of its own, with a client of its own.
        let worker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let Ok(client) = Client::try_from(config) else {
                    return;
                };
                if failed {
                    eprintln!("{}", dump_namespace(&client, &name).await);
                }
                if keep {
                    eprintln!("INPUTBOT_E2E_KEEP_NAMESPACES=1: keeping namespace {name}");
                    return;
                }
                let namespaces: Api<Namespace> = Api::all(client);
                if let Err(e) = namespaces.delete(&name, &DeleteParams::background()).await {
                    eprintln!("warning: could not delete test namespace {name}: {e}");
                }
            });
        });
        let _ = worker.join();
    }
}

/// Everything in a namespace, for the log of a failed test.
pub async fn dump_namespace(client: &Client, ns: &str) -> String {
    let mut out = format!("\n======== state of namespace {ns} ========\n");
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    match events.list(&ListParams::default()).await {
        Ok(list) => {
            let mut items = list.items;
            items.sort_by_key(|e| {
                e.last_timestamp
                    .clone()
                    .or(e.first_timestamp.clone())
                    .map(|t| t.0)
            });
            let _ = writeln!(out, "--- events ({}) ---", items.len());
            for e in items {
                let _ = writeln!(
                    out,
                    "{} {} {}/{}: {} {}",
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.involved_object.kind.unwrap_or_default(),
                    e.involved_object.name.unwrap_or_default(),
                    e.message.unwrap_or_default().trim(),
                    e.count.map(|c| format!("(x{c})")).unwrap_or_default(),
                );
            }
        }
        Err(e) => {
            let _ = writeln!(out, "--- events: cannot list: {e}");
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    if let Ok(list) = pods.list(&ListParams::default()).await {
        let _ = writeln!(out, "--- pods ({}) ---", list.items.len());
        for p in list.items {
            let status = p.status.clone().unwrap_or_default();
            let conditions: Vec<String> = status
                .conditions
                .unwrap_or_default()
                .iter()
                .map(|c| {
                    format!(
                        "{}={}{}",
                        c.type_,
                        c.status,
                        c.reason
                            .as_ref()
                            .map(|r| format!("({r})"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "{} phase={} node={} {}",
                p.name_any(),
                status.phase.unwrap_or_default(),
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_else(|| "<none>".into()),
                conditions.join(" ")
            );
        }
    }
    match Discovery::new(client.clone()).run().await {
        Ok(discovery) => {
            for group in discovery.groups() {
                for (resource, caps) in group.recommended_resources() {
                    if caps.scope != Scope::Namespaced
                        || !caps.supports_operation(verbs::LIST)
                        || matches!(
                            resource.kind.as_str(),
                            "Event" | "Pod" | "Endpoints" | "EndpointSlice"
                        )
                    {
                        continue;
                    }
                    dump_kind(client, ns, &resource, &mut out).await;
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "--- discovery failed: {e}");
        }
    }
    let _ = writeln!(out, "======== end of namespace {ns} ========");
    out
}

async fn dump_kind(client: &Client, ns: &str, resource: &ApiResource, out: &mut String) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    let Ok(list) = api.list(&ListParams::default()).await else {
        return;
    };
    let mut items = list.items;
    // Objects every namespace has are noise.
    items.retain(|o| {
        !(resource.kind == "ServiceAccount" && o.name_any() == "default"
            || resource.kind == "ConfigMap" && o.name_any() == "kube-root-ca.crt")
    });
    if items.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "--- {} {} ({}) ---",
        resource.api_version,
        resource.kind,
        items.len()
    );
    for mut o in items {
        o.metadata.managed_fields = None;
        if resource.kind == "Secret" {
            o.data.as_object_mut().map(|m| m.remove("data"));
        }
        let _ = writeln!(out, "{}---", serde_yaml::to_string(&o).unwrap_or_default());
    }
}
