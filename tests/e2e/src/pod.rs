//! A pod of a Deployment, run as a local process: kwok's nodes are fake (they run no
//! container), so a suite that wants the real program behind a Deployment starts it here, with
//! exactly the command line and environment the Deployment's container is given, and its
//! volumes materialised as files, as the kubelet would mount them.
//!
//! ```text
//!  Deployment (from the API) ──▶ one of its Running pods (the name and namespace fieldRefs see)
//!    container: image ──▶ the binary built beside the tests (the image's entrypoint)
//!               args, env ──▶ verbatim, except the rewrites below
//!               volumeMounts ──▶ <root>/<mountPath>: ConfigMap keys, Secret items, emptyDirs
//! ```
//!
//! What is rewritten, and nothing else ([`Plan::rewrites`] lists each change, so a test can
//! assert that everything else is verbatim):
//! - an argument or literal env value that is an absolute path becomes `<root><path>`;
//! - an argument or literal env value `0.0.0.0:<containerPort>` (or `[::]:…`) becomes
//!   `127.0.0.1:<free port>`: the pod's port, on loopback;
//! - an emptyDir mounted at `/tmp` is `<root>/tmp`, given as `TMPDIR` (a process cannot have
//!   `/tmp` remapped; the programs find their temp dir through it).
//!
//! Env vars taken from elsewhere (`valueFrom`) are resolved like the kubelet does: `fieldRef`
//! from the pod, `secretKeyRef` and `configMapKeyRef` from the API (read with the test's admin
//! credentials — the kubelet's, not the workload's). The process gets no other environment.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Volume};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

/// One change made to the container's command line or environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    /// `arg[3]`, `env INPUTBOT_METRICS_LISTEN`, `mount /tmp`.
    pub what: String,
    /// The value the Deployment gives.
    pub from: String,
    /// The value the process gets.
    pub to: String,
}

/// How to run one container of a Deployment locally.
#[derive(Clone, Debug)]
pub struct Plan {
    /// `<namespace>/<deployment>`.
    pub deployment: String,
    /// The pod whose identity the process takes (`metadata.name` of the fieldRefs).
    pub pod: String,
    /// The container's image.
    pub image: String,
    /// The program (the image's entrypoint, built beside the tests).
    pub program: PathBuf,
    /// The container's args, after the rewrites.
    pub args: Vec<String>,
    /// The whole environment of the process.
    pub env: BTreeMap<String, String>,
    /// Every change from the Deployment's container.
    pub rewrites: Vec<Rewrite>,
    /// The directory standing in for the container's file system.
    pub root: PathBuf,
    /// The loopback address of each container port, by port name (or number).
    pub ports: BTreeMap<String, SocketAddr>,
    /// The readiness probe's HTTP path and port name, if it has one.
    pub readiness: Option<(String, String)>,
    /// Every file materialised from a volume.
    pub files: Vec<PathBuf>,
}

impl Plan {
    /// The loopback address of the container port `name`.
    pub fn port(&self, name: &str) -> SocketAddr {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("{} has no port {name}: {:?}", self.deployment, self.ports))
    }

    /// The rewrites' `from` values, sorted (what a test compares with what it expects).
    pub fn rewritten(&self) -> Vec<String> {
        let mut v: Vec<String> = self.rewrites.iter().map(|r| r.from.clone()).collect();
        v.sort();
        v
    }
}

/// The container's program: the image's entrypoint, the binary of the same name as the
/// image's repository (`…/inputbot-operator:tag` → `inputbot-operator`) built beside the test
/// binaries.
pub fn program_for_image(image: &str) -> anyhow::Result<PathBuf> {
    let repository = image.rsplit_once(':').map_or(image, |(r, _)| r);
    let name = repository.rsplit('/').next().unwrap_or(repository);
    let exe = std::env::current_exe().context("the test binary's path")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("target/<profile>")?;
    let bin = dir.join(name);
    if !bin.exists() {
        bail!(
            "image {image}: its entrypoint {} is not built (scripts/test.sh builds the \
             operator and runtime binaries before the e2e suite)",
            bin.display()
        );
    }
    Ok(bin)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A Running pod of the Deployment's current ReplicaSet (waits up to `timeout`).
pub async fn current_pod(
    client: &Client,
    deployment: &Deployment,
    timeout: Duration,
) -> anyhow::Result<Pod> {
    let ns = deployment.namespace().unwrap_or_default();
    let name = deployment.name_any();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let start = Instant::now();
    loop {
        let d = deployments.get(&name).await?;
        let revision = d
            .annotations()
            .get("deployment.kubernetes.io/revision")
            .cloned();
        let current = sets
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|rs| {
                rs.owner_references()
                    .iter()
                    .any(|o| o.uid == d.uid().unwrap_or_default())
                    && revision.is_some()
                    && rs.annotations().get("deployment.kubernetes.io/revision")
                        == revision.as_ref()
            });
        if let Some(rs) = current {
            let uid = rs.uid().unwrap_or_default();
            let running = pods
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find(|p| {
                    p.owner_references().iter().any(|o| o.uid == uid)
                        && p.metadata.deletion_timestamp.is_none()
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                });
            if let Some(pod) = running {
                return Ok(pod);
            }
        }
        if start.elapsed() > timeout {
            bail!(
                "Deployment {ns}/{name}: no Running pod of its current ReplicaSet within {timeout:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Plans the Deployment's only container as a local process in `root`, with `pod`'s identity.
pub async fn plan(
    client: &Client,
    deployment: &Deployment,
    pod: &Pod,
    root: &Path,
) -> anyhow::Result<Plan> {
    let ns = deployment.namespace().unwrap_or_default();
    let id = format!("{ns}/{}", deployment.name_any());
    let pod_spec = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .with_context(|| format!("{id}: no pod template"))?;
    let [container] = pod_spec.containers.as_slice() else {
        bail!(
            "{id}: expected one container, found {}",
            pod_spec.containers.len()
        );
    };
    if pod_spec
        .init_containers
        .as_ref()
        .is_some_and(|c| !c.is_empty())
    {
        bail!("{id}: init containers are not supported here");
    }
    if container.command.is_some() {
        bail!(
            "{id}: the container overrides the image's entrypoint (command), which this harness does not map to a binary"
        );
    }
    let image = container.image.clone().unwrap_or_default();
    std::fs::create_dir_all(root)?;
    let mut plan = Plan {
        deployment: id.clone(),
        pod: pod.name_any(),
        image: image.clone(),
        program: program_for_image(&image)?,
        args: Vec::new(),
        env: BTreeMap::new(),
        rewrites: Vec::new(),
        root: root.to_path_buf(),
        ports: BTreeMap::new(),
        readiness: None,
        files: Vec::new(),
    };

    // Ports: each container port on a free loopback port.
    let mut port_map: BTreeMap<i32, u16> = BTreeMap::new();
    for p in container.ports.iter().flatten() {
        let local = free_port();
        port_map.insert(p.container_port, local);
        let addr: SocketAddr = format!("127.0.0.1:{local}").parse()?;
        plan.ports.insert(
            p.name
                .clone()
                .unwrap_or_else(|| p.container_port.to_string()),
            addr,
        );
    }
    plan.readiness = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .map(|h| {
            let port = match &h.port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => i.to_string(),
            };
            (h.path.clone().unwrap_or_else(|| "/".into()), port)
        });

    materialise_volumes(
        client,
        &ns,
        &id,
        container,
        pod_spec.volumes.as_deref().unwrap_or_default(),
        &mut plan,
    )
    .await?;

    for (i, arg) in container.args.iter().flatten().enumerate() {
        let value = rewrite_value(arg, root, &port_map);
        if &value != arg {
            plan.rewrites.push(Rewrite {
                what: format!("arg[{i}]"),
                from: arg.clone(),
                to: value.clone(),
            });
        }
        plan.args.push(value);
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => {
                let value = rewrite_value(v, root, &port_map);
                if &value != v {
                    plan.rewrites.push(Rewrite {
                        what: format!("env {}", var.name),
                        from: v.clone(),
                        to: value.clone(),
                    });
                }
                value
            }
            (None, Some(from)) => resolve_from(client, &ns, pod, from)
                .await
                .with_context(|| format!("{id}: env {}", var.name))?,
            (None, None) => String::new(),
        };
        plan.env.insert(var.name.clone(), value);
    }
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        bail!("{id}: envFrom is not supported here");
    }
    Ok(plan)
}

/// The rule of the module's doc: absolute paths under `root`, `0.0.0.0:<containerPort>` on
/// loopback.
fn rewrite_value(value: &str, root: &Path, ports: &BTreeMap<i32, u16>) -> String {
    if value.starts_with('/') {
        return format!("{}{value}", root.display());
    }
    for host in ["0.0.0.0:", "[::]:"] {
        if let Some(port) = value.strip_prefix(host).and_then(|p| p.parse::<i32>().ok())
            && let Some(local) = ports.get(&port)
        {
            return format!("127.0.0.1:{local}");
        }
    }
    value.to_owned()
}

async fn resolve_from(
    client: &Client,
    ns: &str,
    pod: &Pod,
    from: &k8s_openapi::api::core::v1::EnvVarSource,
) -> anyhow::Result<String> {
    if let Some(f) = &from.field_ref {
        return Ok(match f.field_path.as_str() {
            "metadata.name" => pod.name_any(),
            "metadata.namespace" => pod.namespace().unwrap_or_default(),
            "metadata.uid" => pod.uid().unwrap_or_default(),
            "spec.nodeName" => pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            "spec.serviceAccountName" => pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            "status.podIP" => "127.0.0.1".into(),
            other => bail!("fieldRef {other} is not supported here"),
        });
    }
    if let Some(s) = &from.secret_key_ref {
        let secret = Api::<Secret>::namespaced(client.clone(), ns)
            .get(&s.name)
            .await?;
        let value = secret
            .data
            .unwrap_or_default()
            .remove(&s.key)
            .with_context(|| format!("Secret {ns}/{} has no key {}", s.name, s.key))?;
        return Ok(String::from_utf8(value.0)?);
    }
    if let Some(c) = &from.config_map_key_ref {
        let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get(&c.name)
            .await?;
        return cm
            .data
            .unwrap_or_default()
            .remove(&c.key)
            .with_context(|| format!("ConfigMap {ns}/{} has no key {}", c.name, c.key));
    }
    bail!("a valueFrom other than fieldRef, secretKeyRef or configMapKeyRef")
}

async fn materialise_volumes(
    client: &Client,
    ns: &str,
    id: &str,
    container: &Container,
    volumes: &[Volume],
    plan: &mut Plan,
) -> anyhow::Result<()> {
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .with_context(|| format!("{id}: volumeMount {} names no volume", mount.name))?;
        if mount.sub_path.is_some() {
            bail!(
                "{id}: volumeMount {} uses subPath, not supported here",
                mount.name
            );
        }
        let dir = plan.root.join(mount.mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir)?;
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(cm) = &volume.config_map {
            let found = Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(&cm.name)
                .await?;
            let data: BTreeMap<String, Vec<u8>> = match found {
                Some(c) => c
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect(),
                None if cm.optional == Some(true) => BTreeMap::new(),
                None => bail!(
                    "{id}: ConfigMap {ns}/{} of volume {} does not exist",
                    cm.name,
                    volume.name
                ),
            };
            files = select_items(id, &volume.name, data, cm.items.as_deref())?;
        } else if let Some(s) = &volume.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let found = Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(&name)
                .await?;
            let data: BTreeMap<String, Vec<u8>> = match found {
                Some(secret) => secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
                None if s.optional == Some(true) => BTreeMap::new(),
                None => bail!(
                    "{id}: Secret {ns}/{name} of volume {} does not exist (the pod would not start)",
                    volume.name
                ),
            };
            files = select_items(id, &volume.name, data, s.items.as_deref())?;
        } else if volume.empty_dir.is_some() {
            if mount.mount_path == "/tmp" {
                plan.env.insert("TMPDIR".into(), dir.display().to_string());
                plan.rewrites.push(Rewrite {
                    what: format!("mount {} (emptyDir {})", mount.mount_path, volume.name),
                    from: "/tmp".into(),
                    to: dir.display().to_string(),
                });
            }
        } else {
            bail!(
                "{id}: volume {} is neither a ConfigMap, a Secret nor an emptyDir",
                volume.name
            );
        }
        for (path, bytes) in files {
            let file = dir.join(&path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, bytes)?;
            plan.files.push(file);
        }
    }
    Ok(())
}

/// The files of a ConfigMap or Secret volume: every key, or only `items` (each required).
fn select_items(
    id: &str,
    volume: &str,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    match items {
        None => Ok(data.into_iter().collect()),
        Some(items) => items
            .iter()
            .map(|i| {
                data.get(&i.key)
                    .map(|b| (i.path.clone(), b.clone()))
                    .with_context(|| format!("{id}: volume {volume} wants key {}, which is not there (the pod would not start)", i.key))
            })
            .collect(),
    }
}

/// A planned container running as a child process; SIGKILLed when dropped (its log tail is
/// printed when the test panics).
pub struct LocalProcess {
    /// How it was started.
    pub plan: Plan,
    /// Its stdout and stderr.
    pub log: PathBuf,
    child: Option<Child>,
}

impl LocalProcess {
    /// Starts `plan.program plan.args` with exactly `plan.env` plus `extra` (each addition a
    /// caller must state), in `plan.root`.
    pub fn spawn(plan: Plan, extra: &[(&str, &str)]) -> LocalProcess {
        let log = plan.root.join("process.log");
        let out = std::fs::File::create(&log).expect("a log file");
        let err = out.try_clone().expect("a log file");
        let mut cmd = Command::new(&plan.program);
        cmd.args(&plan.args)
            .env_clear()
            .envs(&plan.env)
            .current_dir(&plan.root)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "starting {} for {}: {e}",
                plan.program.display(),
                plan.deployment
            )
        });
        LocalProcess {
            plan,
            log,
            child: Some(child),
        }
    }

    /// `http://<the container port's loopback address><path>`.
    pub fn url(&self, port: &str, path: &str) -> String {
        format!("http://{}{path}", self.plan.port(port))
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the container's readiness probe passes (panics with the log after
    /// `timeout`, or when the process exits).
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let (path, port) = self
            .plan
            .readiness
            .clone()
            .unwrap_or_else(|| panic!("{} has no HTTP readiness probe", self.plan.deployment));
        let url = self.url(&port, &path);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("a client");
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} ({}) exited ({status}) before {url} was ready:\n{}",
                    self.plan.deployment,
                    self.plan.program.display(),
                    tail(&self.log_text(), 60)
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "{}: {url} not ready within {timeout:?}:\n{}",
                    self.plan.deployment,
                    tail(&self.log_text(), 60)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits up to `grace` (as the kubelet would, then SIGKILL). Returns
    /// whether it exited by itself with status 0.
    pub async fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for LocalProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- {} ({}) log {} ----\n{}",
                self.plan.deployment,
                self.plan.program.display(),
                self.log.display(),
                tail(&self.log_text(), 40)
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_absolute_paths_and_the_container_port_and_nothing_else() {
        let root = Path::new("/tmp/r");
        let ports = BTreeMap::from([(8080, 41000)]);
        let cases = [
            (
                "/etc/inputbot/component.json",
                "/tmp/r/etc/inputbot/component.json",
            ),
            ("0.0.0.0:8080", "127.0.0.1:41000"),
            ("[::]:8080", "127.0.0.1:41000"),
            // Another port, a host name, relative paths and plain words stay.
            ("0.0.0.0:9090", "0.0.0.0:9090"),
            ("kafka:9092", "kafka:9092"),
            ("etc/inputbot", "etc/inputbot"),
            ("run", "run"),
            ("info,kube=warn", "info,kube=warn"),
        ];
        for (from, to) in cases {
            assert_eq!(rewrite_value(from, root, &ports), to, "{from}");
        }
    }

    #[test]
    fn volume_items_select_keys_and_a_missing_key_is_an_error() {
        let data = BTreeMap::from([
            ("a".to_owned(), b"1".to_vec()),
            ("b".to_owned(), b"2".to_vec()),
        ]);
        assert_eq!(select_items("d", "v", data.clone(), None).unwrap().len(), 2);
        let items = [k8s_openapi::api::core::v1::KeyToPath {
            key: "b".into(),
            path: "renamed".into(),
            mode: None,
        }];
        assert_eq!(
            select_items("d", "v", data.clone(), Some(&items)).unwrap(),
            [("renamed".to_owned(), b"2".to_vec())]
        );
        let missing = [k8s_openapi::api::core::v1::KeyToPath {
            key: "c".into(),
            path: "c".into(),
            mode: None,
        }];
        let err = select_items("d", "v", data, Some(&missing)).unwrap_err();
        assert!(err.to_string().contains("wants key c"), "{err}");
    }
}
