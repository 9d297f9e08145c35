//! The operator's scale benchmark (a program, not a test): N bots — an InputBot, a Pipeline
//! and an ActionBinding each — applied at once to a real API server and broker, with the
//! operator as a child process.
//!
//! Measures, on this machine, in one run:
//! - **baseline**: the time the same client takes to create as many plain ConfigMaps as the
//!   operator must create children (the API server's own write throughput here);
//! - the time from the first apply until every child exists, and its ratio to the baseline;
//! - the operator's idle RSS (started, nothing to do), peak RSS, and RSS once settled;
//! - the API writes the operator makes during a steady-state window (nothing changes);
//! - where the machine's CPU went meanwhile: seconds used by the operator and by each process
//!   of the harness (API server, etcd, controller-manager, scheduler, kwok, Kafka).
//!
//! ```text
//! scripts/harness.sh start && eval "$(scripts/harness.sh env)"
//! cargo build --release -p inputbot-operator
//! cargo run -p inputbot-e2e --example operator_scale -- [BOTS=1000] [STEADY_SECONDS=300]
//! ```
//! The operator binary is `$INPUTBOT_OPERATOR_BIN`, else target/release/inputbot-operator.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use inputbot_api::{ActionBinding, InputBot, Pipeline};
use inputbot_e2e::operator::OperatorProcess;
use inputbot_e2e::{Cluster, TestNamespace, ensure_project_crds};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

const CONCURRENCY: usize = 32;

fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// One number from `/proc/PID/status` (`VmRSS:`, `RssAnon:`, `RssFile:`, `Threads:`).
fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What the RSS is made of at a moment: anonymous memory (heap, stacks, the allocator's
/// arenas), file-backed pages (the binary and shared libraries) and the thread count.
fn rss_parts(pid: u32) -> String {
    let mib = |f| status_field(pid, f).unwrap_or(0) as f64 / 1024.0;
    format!(
        "anon {:.1} MiB, file {:.1} MiB, {} threads",
        mib("RssAnon:"),
        mib("RssFile:"),
        status_field(pid, "Threads:").unwrap_or(0)
    )
}

/// CPU seconds (user + system) a process has used so far, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0) // USER_HZ is 100 on Linux
}

/// The processes whose CPU the benchmark accounts for: the operator, and the harness's
/// components as its `pids/` directory names them.
fn accounted(operator: u32) -> Vec<(String, u32)> {
    let mut processes = vec![("operator".to_string(), operator)];
    if let Some(dir) = std::env::var_os("INPUTBOT_HARNESS_DIR")
        && let Ok(entries) = std::fs::read_dir(std::path::Path::new(&dir).join("pids"))
    {
        let mut harness: Vec<(String, u32)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e
                    .file_name()
                    .to_string_lossy()
                    .strip_suffix(".pid")?
                    .to_owned();
                let pid = std::fs::read_to_string(e.path())
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some((name, pid))
            })
            .collect();
        harness.sort();
        processes.extend(harness);
    }
    processes
}

fn cpu_snapshot(processes: &[(String, u32)]) -> Vec<f64> {
    processes
        .iter()
        .map(|(_, pid)| cpu_seconds(*pid).unwrap_or(0.0))
        .collect()
}

/// One line: CPU seconds each process used between two snapshots, against the cores × wall time.
fn cpu_line(processes: &[(String, u32)], from: &[f64], to: &[f64], wall: Duration) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let used: Vec<String> = processes
        .iter()
        .zip(from.iter().zip(to))
        .map(|((name, _), (a, b))| format!("{name} {:.1}", b - a))
        .collect();
    let total: f64 = from.iter().zip(to).map(|(a, b)| b - a).sum();
    format!(
        "CPU seconds: {}; {total:.1} of the {:.1} the {cores} cores had",
        used.join(", "),
        wall.as_secs_f64() * cores as f64
    )
}

fn bot_docs(i: usize) -> [serde_json::Value; 3] {
    [
        json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "InputBot", "metadata": {"name": format!("b{i:04}")},
               "spec": {"sources": [{"name": "hook", "webhook": {"path": "/hook", "auth": {"none": {}}}}]}}),
        json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "Pipeline", "metadata": {"name": format!("p{i:04}")},
               "spec": {"botRef": {"name": format!("b{i:04}")}, "steps": [{"filter": {"when": "has(data.id)"}}]}}),
        json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "ActionBinding", "metadata": {"name": format!("a{i:04}")},
               "spec": {"pipelineRef": {"name": format!("p{i:04}")}, "action": {"log": {"template": "{{ data.id }}"}}}}),
    ]
}

/// Server-side applies one of the three kinds (no discovery round trip per object).
async fn apply_doc(client: &kube::Client, ns: &str, doc: &serde_json::Value) {
    use kube::api::{Patch, PatchParams};
    let name = doc["metadata"]["name"].as_str().expect("a name");
    let params = PatchParams::apply("inputbot-bench").force();
    let result = match doc["kind"].as_str() {
        Some("InputBot") => Api::<InputBot>::namespaced(client.clone(), ns)
            .patch(name, &params, &Patch::Apply(doc))
            .await
            .map(drop),
        Some("Pipeline") => Api::<Pipeline>::namespaced(client.clone(), ns)
            .patch(name, &params, &Patch::Apply(doc))
            .await
            .map(drop),
        _ => Api::<ActionBinding>::namespaced(client.clone(), ns)
            .patch(name, &params, &Patch::Apply(doc))
            .await
            .map(drop),
    };
    result.unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

async fn count<K>(api: &Api<K>, selector: Option<&str>) -> usize
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut lp = ListParams::default();
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    api.list_metadata(&lp)
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bots: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let steady: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(300);
    let cluster = Cluster::connect().await;
    let client = cluster.client.clone();
    ensure_project_crds(&client).await;
    println!(
        "machine: {} cores, {} MiB",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().next().and_then(|l| l
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()))
            .unwrap_or(0)
            / 1024
    );

    // Baseline: the API server's write throughput for as many objects as the children.
    let children = bots * 7; // 3 ConfigMaps, 3 Deployments, 1 Service per bot
    let base_ns = TestNamespace::create(&cluster, "bench-baseline").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), base_ns.name());
    let started = Instant::now();
    futures::stream::iter(0..children)
        .map(|i| {
            let cms = cms.clone();
            async move {
                let cm: ConfigMap = serde_json::from_value(
                    json!({"metadata": {"name": format!("cm-{i}")}, "data": {"k": "v"}}),
                )
                .unwrap();
                cms.create(&PostParams::default(), &cm)
                    .await
                    .expect("a ConfigMap");
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let baseline = started.elapsed();
    println!(
        "baseline: {children} ConfigMaps created directly in {:.1} s",
        baseline.as_secs_f64()
    );
    drop(base_ns);

    let ns = TestNamespace::create(&cluster, "bench-scale").await;
    let n = ns.name().to_owned();
    let bin = std::env::var("INPUTBOT_OPERATOR_BIN").unwrap_or_else(|_| {
        let mut p = inputbot_e2e::repo_root();
        p.push(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()));
        p.push("release/inputbot-operator");
        p.display().to_string()
    });
    inputbot_e2e::operator::set_operator_binary(&bin);
    let bootstrap = inputbot_e2e::kafka_bootstrap();
    let args = [
        "--log-format",
        "text",
        "run",
        "--watch-namespace",
        &n,
        "--leader-elect",
        "false",
        "--kafka-bootstrap",
        &bootstrap,
        "--default-replication-factor",
        "1",
        "--default-partitions",
        "1",
        "--concurrency",
        "16",
        "--runtime-image",
        "inputbot/inputbot:bench",
    ];
    let op = OperatorProcess::start_with(args.iter().map(|s| s.to_string()).collect());
    let pid = op.pid().expect("the operator runs");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = rss_kib(pid).unwrap_or(0);
    println!(
        "operator idle RSS: {:.1} MiB ({})",
        idle as f64 / 1024.0,
        rss_parts(pid)
    );

    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let peak_parts = std::sync::Arc::new(std::sync::Mutex::new(rss_parts(pid)));
    let sampler = {
        let peak = peak.clone();
        let peak_parts = peak_parts.clone();
        tokio::spawn(async move {
            loop {
                if let Some(r) = rss_kib(pid) {
                    let before = peak.fetch_max(r, std::sync::atomic::Ordering::Relaxed);
                    if r > before {
                        *peak_parts.lock().expect("not poisoned") = rss_parts(pid);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let processes = accounted(pid);
    let cpu_at_start = cpu_snapshot(&processes);
    let started = Instant::now();
    futures::stream::iter(0..bots)
        .map(|i| {
            let client = client.clone();
            let n = n.clone();
            async move {
                for doc in bot_docs(i) {
                    apply_doc(&client, &n, &doc).await;
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let applied = started.elapsed();
    println!(
        "applied {} resources in {:.1} s",
        bots * 3,
        applied.as_secs_f64()
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &n);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &n);
    let services: Api<Service> = Api::namespaced(client.clone(), &n);
    let sel = Some("app.kubernetes.io/managed-by=inputbot-operator");
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let (d, c, s) = (
            count(&deployments, sel).await,
            count(&configmaps, sel).await,
            count(&services, sel).await,
        );
        if d == bots * 3 && c == bots * 3 && s == bots {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "children incomplete after 15 min: {d} Deployments, {c} ConfigMaps, {s} Services"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_children = started.elapsed();
    println!(
        "every child exists {:.1} s after the first apply ({} objects) — {:.2}× the baseline; \
         {:.1} s after the last apply",
        all_children.as_secs_f64(),
        children,
        all_children.as_secs_f64() / baseline.as_secs_f64(),
        all_children.saturating_sub(applied).as_secs_f64()
    );
    println!(
        "  until then, {}",
        cpu_line(
            &processes,
            &cpu_at_start,
            &cpu_snapshot(&processes),
            all_children
        )
    );
    let so_far = op
        .metric("inputbot_operator_reconciles_total")
        .await
        .unwrap_or(0.0);
    println!(
        "reconciles until then: {so_far} ({:.2} per resource)",
        so_far / (bots * 3) as f64
    );

    // Settle: until the operator's write count holds still for 20 s (rollouts finish, statuses
    // reach Ready), then measure a steady-state window.
    let mut writes = op
        .metric("inputbot_operator_api_writes_total")
        .await
        .unwrap_or(0.0);
    let settle_deadline = Instant::now() + Duration::from_secs(900);
    loop {
        tokio::time::sleep(Duration::from_secs(20)).await;
        let now = op
            .metric("inputbot_operator_api_writes_total")
            .await
            .unwrap_or(0.0);
        if now == writes || Instant::now() > settle_deadline {
            break;
        }
        writes = now;
    }
    let settled = started.elapsed();
    let cpu_at_settled = cpu_snapshot(&processes);
    let reconciles = op
        .metric("inputbot_operator_reconciles_total")
        .await
        .unwrap_or(0.0);
    println!(
        "settled (no operator write for 20 s) {:.1} s after the first apply; {writes} writes and \
         {reconciles} reconciles ({:.2} per resource) in all",
        settled.as_secs_f64(),
        reconciles / (bots * 3) as f64
    );
    println!(
        "  until then, {}",
        cpu_line(&processes, &cpu_at_start, &cpu_at_settled, settled)
    );
    tokio::time::sleep(Duration::from_secs(steady)).await;
    let steady_writes = op
        .metric("inputbot_operator_api_writes_total")
        .await
        .unwrap_or(0.0)
        - writes;
    let steady_reconciles = op
        .metric("inputbot_operator_reconciles_total")
        .await
        .unwrap_or(0.0)
        - reconciles;
    sampler.abort();
    println!(
        "  in the steady state, {}",
        cpu_line(
            &processes,
            &cpu_at_settled,
            &cpu_snapshot(&processes),
            Duration::from_secs(steady)
        )
    );
    println!(
        "steady state: {steady_writes} API writes and {steady_reconciles} reconciles in {steady} s; RSS {:.1} MiB; peak RSS {:.1} MiB",
        rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
        peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    );
    println!(
        "RSS at the peak: {}; at the end: {}",
        peak_parts.lock().expect("not poisoned"),
        rss_parts(pid)
    );
    drop(op);
}
