//! The whole user flow, end to end, on the harness (or any cluster in `KUBECONFIG`):
//!
//! ```text
//!  helm install (CRDs from the chart, values → the test broker, one watched namespace)
//!    ─▶ the chart's operator Deployment, run as a local process with exactly its container's
//!       args and env, authenticated as the chart's ServiceAccount (impersonation) — so the
//!       chart's RBAC is proven sufficient — and that ServiceAccount proven not cluster-admin
//!    ─▶ every examples/*.yaml applied ─▶ `kubectl get inputbot…` Ready, with reason and endpoint
//!    ─▶ every rendered runtime Deployment run as a local process (its command line, env,
//!       ConfigMap and Secrets as mounted) against the real broker
//!    ─▶ signed webhooks and a polled status page in; the local receiver gets the actions with
//!       the transformed content; a refused lead lands on the dead-letter topic, and the
//!       dead-letter notice reaches chat
//!    ─▶ helm upgrade with a changed value rolls the operator (a new ReplicaSet, kwok's pods),
//!       and the new operator pod takes over
//!    ─▶ helm uninstall leaves the CRDs and the users' resources in place
//! ```
//!
//! What a local process changes from its Deployment is stated in `inputbot_e2e::pod` and
//! asserted here: paths move under a temp root, the container port moves to a free loopback
//! port, `/tmp` is `TMPDIR`, and the operator gets `KUBECONFIG` (the impersonating
//! kubeconfig standing in for the ServiceAccount's token). Everything else is verbatim.

mod examples;
mod flow;
mod operator;
mod views;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use inputbot_e2e::helm::{Helm, chart_dir};
use inputbot_e2e::identity::{self, may, service_account_user};
use inputbot_e2e::receiver::Receiver;
use inputbot_e2e::smtp::MailSink;
use inputbot_e2e::{
    Cluster, TestNamespace, apply, kafka_bootstrap, setting, unique_suffix, wait_for,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use operator::{Operator, literal_env, pod_template_hash};
use serde_json::json;
use views::{adopt_existing_crds, kubectl, kubectl_get, table, wait_crds_served, wait_table_ready};

const RELEASE: &str = "flow";
const FULLNAME: &str = "flow-inputbot-operator";
const CRDS: [&str; 3] = [
    "actionbindings.inputbot.dev",
    "inputbots.inputbot.dev",
    "pipelines.inputbot.dev",
];
const HELM_TIMEOUT: Duration = Duration::from_secs(60);
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const FLOW_TIMEOUT: Duration = Duration::from_secs(45);

/// Wall time of each phase, printed at the end (and on failure, as far as it got).
struct Phases {
    start: Instant,
    last: Instant,
    done: Vec<(String, Duration)>,
}

impl Phases {
    fn new() -> Phases {
        let now = Instant::now();
        Phases {
            start: now,
            last: now,
            done: Vec::new(),
        }
    }
    fn mark(&mut self, name: &str) {
        let now = Instant::now();
        self.done.push((name.to_owned(), now - self.last));
        eprintln!(
            "[install_flow] {name}: {:.1?} (total {:.1?})",
            now - self.last,
            now - self.start
        );
        self.last = now;
    }
}

/// Whether the cluster runs the pods itself (`INPUTBOT_E2E_REAL_PODS=1`: kind, k3d, with the
/// project's images) instead of kwok's fake nodes.
fn real_pods() -> bool {
    setting("INPUTBOT_E2E_REAL_PODS").as_deref() == Some("1")
}

/// The chart's values: the test broker (as the pods reach it), one watched namespace, and with
/// real pods the images to run.
fn values(bootstrap: &str, watched: &str, extra: &str) -> String {
    let mut v = String::new();
    let pod_bootstrap = setting("INPUTBOT_E2E_POD_KAFKA_BOOTSTRAP")
        .filter(|_| real_pods())
        .unwrap_or_else(|| bootstrap.to_owned());
    v.push_str(&format!(
        "kafka:\n  bootstrapServers: \"{pod_bootstrap}\"\n"
    ));
    v.push_str("topics:\n  defaults: {partitions: 2, replicationFactor: 1}\n");
    v.push_str(&format!("watchNamespaces: [\"{watched}\"]\n"));
    if real_pods() {
        let image = |var: &str| {
            let image = setting(var)
                .unwrap_or_else(|| panic!("INPUTBOT_E2E_REAL_PODS=1 needs {var} (repository:tag)"));
            let (repo, tag) = image
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("{var}={image}: expected repository:tag"));
            format!("{{repository: \"{repo}\", tag: \"{tag}\"}}")
        };
        v.push_str(&format!(
            "image: {}\n",
            image("INPUTBOT_E2E_OPERATOR_IMAGE")
        ));
        v.push_str(&format!(
            "runtime: {{image: {}}}\n",
            image("INPUTBOT_E2E_RUNTIME_IMAGE")
        ));
    }
    v.push_str(extra);
    v
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_install_runs_every_example_end_to_end_then_upgrade_rolls_and_uninstall_keeps_the_bots()
 {
    let mut phases = Phases::new();
    let cluster = Cluster::connect().await;
    let client = cluster.client.clone();
    let bootstrap = kafka_bootstrap();
    let system = TestNamespace::create(&cluster, "flow-system").await;
    let bots = TestNamespace::create(&cluster, "flow-bots").await;
    let root = std::env::temp_dir().join(format!("inputbot-e2e-flow-{}", unique_suffix()));
    std::fs::create_dir_all(&root).expect("a temp dir");
    let outside = Receiver::start(examples::outside_rule).await;
    let mail = MailSink::start().await;

    // ---- helm install, CRDs from the chart ------------------------------------------
    adopt_existing_crds(&client, system.name()).await;
    let helm = Helm::new(system.name());
    let chart = chart_dir().display().to_string();
    let values_file = root.join("values.yaml");
    std::fs::write(&values_file, values(&bootstrap, bots.name(), "")).unwrap();
    let notes = block(|| {
        helm.must(
            &[
                "install",
                RELEASE,
                &chart,
                "--values",
                values_file.to_str().unwrap(),
            ],
            HELM_TIMEOUT,
        )
    });
    assert!(notes.contains("kubectl get inputbot"), "NOTES.txt: {notes}");
    wait_crds_served(&client).await;
    phases.mark("helm install");

    // ---- the ServiceAccount is not cluster-admin -------------------------------------
    let sa = FULLNAME;
    Api::<ServiceAccount>::namespaced(client.clone(), system.name())
        .get(sa)
        .await
        .expect("the chart's ServiceAccount");
    let bots_ns = bots.name();
    let mut wrong = Vec::new();
    for q in [
        ("list", "core/secrets", ""),
        ("get", "core/secrets", bots_ns),
        ("list", "core/secrets", system.name()),
        (
            "create",
            "rbac.authorization.k8s.io/clusterrolebindings",
            "",
        ),
        ("create", "rbac.authorization.k8s.io/rolebindings", bots_ns),
        ("delete", "core/namespaces", ""),
        ("create", "core/pods", bots_ns),
        ("*", "*/*", ""),
        (
            "update",
            "apiextensions.k8s.io/customresourcedefinitions",
            "",
        ),
        ("impersonate", "core/serviceaccounts", ""),
        // Namespaced mode: nothing beyond the watched namespace.
        ("list", "inputbot.dev/inputbots", ""),
        ("create", "apps/deployments", system.name()),
    ] {
        if may(&client, system.name(), sa, q).await {
            wrong.push(q);
        }
    }
    assert!(
        wrong.is_empty(),
        "the chart's ServiceAccount may do what it must not: {wrong:?}"
    );
    for q in [
        ("patch", "apps/deployments", bots_ns),
        ("patch", "inputbot.dev/inputbots/status", bots_ns),
    ] {
        assert!(
            may(&client, system.name(), sa, q).await,
            "the ServiceAccount may not {q:?}"
        );
    }
    // The same with real requests, through the kubeconfig the operator will use.
    let kubeconfig = root.join("operator.kubeconfig");
    identity::write_impersonating_kubeconfig(&service_account_user(system.name(), sa), &kubeconfig)
        .expect("a kubeconfig");
    let as_sa = {
        let k = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(k, &Default::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    };
    // Who the API server says that is: the ServiceAccount, with the groups its token carries.
    let review: SelfSubjectReview = serde_json::from_value(
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
    )
    .unwrap();
    let me = Api::<SelfSubjectReview>::all(as_sa.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("a SelfSubjectReview");
    let info = me.status.and_then(|s| s.user_info).expect("user info");
    assert_eq!(
        info.username.as_deref(),
        Some(service_account_user(system.name(), sa).as_str())
    );
    let groups = info.groups.unwrap_or_default();
    assert!(
        groups.contains(&format!("system:serviceaccounts:{}", system.name())),
        "{groups:?}"
    );
    assert!(!groups.iter().any(|g| g == "system:masters"), "{groups:?}");
    let forbidden = |r: Result<(), kube::Error>, what: &str| match r {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("{what} as the operator's ServiceAccount must be forbidden, got {other:?}"),
    };
    forbidden(
        Api::<Secret>::namespaced(as_sa.clone(), bots_ns)
            .list(&ListParams::default())
            .await
            .map(|_| ()),
        "listing Secrets",
    );
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("flow-escalate-{}", unique_suffix())},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": system.name()}]
    })).unwrap();
    forbidden(
        Api::<ClusterRoleBinding>::all(as_sa.clone())
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &crb,
            )
            .await
            .map(|_| ()),
        "creating a ClusterRoleBinding",
    );
    forbidden(
        Api::<k8s_openapi::api::core::v1::Namespace>::all(as_sa.clone())
            .delete(bots_ns, &DeleteParams::default().dry_run())
            .await
            .map(|_| ()),
        "deleting a namespace",
    );
    if let Some(kubeconfig_admin) = setting("KUBECONFIG")
        && let Some(kubectl) = kubectl()
        && let Ok(out) = std::process::Command::new(kubectl)
            .args([
                "--kubeconfig",
                &kubeconfig_admin,
                "auth",
                "can-i",
                "list",
                "secrets",
                "--all-namespaces",
                "--as",
                &service_account_user(system.name(), sa),
            ])
            .output()
    {
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "kubectl auth can-i list secrets -A"
        );
    }
    phases.mark("RBAC: not cluster-admin");

    // ---- the operator, as the chart runs it ------------------------------------------
    let kubeconfig_s = kubeconfig.display().to_string();
    let operator = Operator::up(
        &cluster,
        system.name(),
        &root.join("operator-1"),
        &kubeconfig_s,
    )
    .await;
    phases.mark("operator started");

    // ---- every example, as a user applies it -----------------------------------------
    let (docs, changes) = examples::prepared(&outside, &mail);
    eprintln!(
        "[install_flow] changes to the shipped examples:\n  {}",
        changes.join("\n  ")
    );
    let mut names: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for doc in &docs {
        apply(&client, Some(bots_ns), doc)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "applying {} {}: {}",
                    doc["kind"],
                    doc["metadata"]["name"],
                    inputbot_e2e::api_error_message(&e)
                )
            });
        let plural = match doc["kind"].as_str() {
            Some("InputBot") => "inputbots",
            Some("Pipeline") => "pipelines",
            Some("ActionBinding") => "actionbindings",
            _ => continue,
        };
        names
            .entry(plural)
            .or_default()
            .insert(doc["metadata"]["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(names.values().map(BTreeSet::len).sum::<usize>(), 13);
    let bot_rows = wait_table_ready(&client, bots_ns, "inputbots", &names["inputbots"]).await;
    for plural in ["pipelines", "actionbindings"] {
        wait_table_ready(&client, bots_ns, plural, &names[plural]).await;
    }
    let endpoint = |bot: &str| {
        bot_rows
            .iter()
            .find(|r| r["Name"] == bot)
            .map(|r| r["Endpoint"].clone())
            .unwrap()
    };
    for (bot, path) in [
        ("quickstart", "/github"),
        ("github", "/github"),
        ("support-intake", "/tickets"),
    ] {
        assert_eq!(
            endpoint(bot),
            format!("http://{bot}-ingest.{bots_ns}.svc:8080{path}"),
            "Endpoint of {bot}"
        );
    }
    // A polled bot has no webhook, so no endpoint.
    assert!(
        !endpoint("vendor-status").starts_with("http"),
        "{}",
        endpoint("vendor-status")
    );
    // `kubectl get inputbot-all` (the kinds' category) lists all three kinds, each row Ready;
    // `kubectl get inputbot` the InputBots alone, with their endpoints.
    if let Some(bots) = kubectl_get("inputbot", bots_ns) {
        let rows: Vec<&str> = bots
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("NAME"))
            .collect();
        assert_eq!(rows.len(), 4, "kubectl get inputbot:\n{bots}");
    }
    if let Some(out) = kubectl_get("inputbot-all", bots_ns) {
        eprintln!("[install_flow] kubectl get inputbot-all:\n{out}");
        let rows: Vec<&str> = out
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("NAME"))
            .collect();
        assert_eq!(rows.len(), 13, "kubectl get inputbot:\n{out}");
        for line in &rows {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert!(
                cells.contains(&"True") && cells.contains(&"Ready"),
                "not Ready: {line}"
            );
        }
        for (bot, path) in [
            ("quickstart", "/github"),
            ("github", "/github"),
            ("support-intake", "/tickets"),
        ] {
            let line = rows
                .iter()
                .find(|l| l.starts_with(&format!("inputbot.inputbot.dev/{bot} ")))
                .unwrap_or_else(|| panic!("kubectl get inputbot lacks {bot}:\n{out}"));
            assert!(
                line.contains(&format!("http://{bot}-ingest.{bots_ns}.svc:8080{path}")),
                "{line}"
            );
        }
    }
    phases.mark("examples applied and Ready");

    // ---- the runtime, as the rendered Deployments run it -----------------------------
    let runtime = flow::start_runtime(&cluster, bots_ns, &root.join("runtime"), real_pods()).await;
    phases.mark("runtime processes ready");
    flow::drive_examples(&runtime, &outside, &mail, &bootstrap).await;
    phases.mark("events through every example");

    // ---- helm upgrade rolls the operator ----------------------------------------------
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), system.name());
    let before = deployments.get(FULLNAME).await.unwrap();
    let before_hash = pod_template_hash(&client, &before).await;
    std::fs::write(
        &values_file,
        values(&bootstrap, bots_ns, "concurrency: 4\n"),
    )
    .unwrap();
    block(|| {
        helm.must(
            &[
                "upgrade",
                RELEASE,
                &chart,
                "--values",
                values_file.to_str().unwrap(),
            ],
            HELM_TIMEOUT,
        )
    });
    let after = wait_for(
        "the operator Deployment rolled out",
        Duration::from_secs(60),
        || async {
            let d = deployments.get(FULLNAME).await.ok()?;
            let s = d.status.clone()?;
            let want = d.spec.as_ref()?.replicas.unwrap_or(1);
            (s.observed_generation >= d.metadata.generation
                && d.metadata.generation > before.metadata.generation
                && s.updated_replicas == Some(want)
                && s.available_replicas == Some(want)
                && s.replicas == Some(want))
            .then_some(d)
        },
    )
    .await;
    let after_hash = pod_template_hash(&client, &after).await;
    assert_ne!(before_hash, after_hash, "a new ReplicaSet");
    assert_eq!(
        literal_env(&after)["INPUTBOT_CONCURRENCY"].as_deref(),
        Some("4")
    );
    // The old pod is gone: its process gets SIGTERM and hands the Lease over.
    operator.stop().await;
    let operator = Operator::up(
        &cluster,
        system.name(),
        &root.join("operator-2"),
        &kubeconfig_s,
    )
    .await;
    let new_pods = operator.identities(&client, &after).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), system.name());
    wait_for(
        "a new operator pod to hold the Lease",
        Duration::from_secs(30),
        || async {
            let l = leases.get_opt("inputbot-operator").await.ok().flatten()?;
            new_pods.contains(&l.spec?.holder_identity?).then_some(())
        },
    )
    .await;
    // It works as the ServiceAccount: a deleted child comes back.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), bots_ns);
    let old_uid = configmaps.get("quickstart-log-act").await.unwrap().uid();
    configmaps
        .delete("quickstart-log-act", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "the new operator to restore a deleted ConfigMap",
        Duration::from_secs(30),
        || async {
            let cm = configmaps
                .get_opt("quickstart-log-act")
                .await
                .ok()
                .flatten()?;
            (cm.uid() != old_uid).then_some(())
        },
    )
    .await;
    phases.mark("helm upgrade rolled the operator");

    // ---- helm uninstall keeps the CRDs and the bots -----------------------------------
    block(|| {
        helm.must(
            &["uninstall", RELEASE, "--wait", "--timeout", "60s"],
            HELM_TIMEOUT + Duration::from_secs(10),
        )
    });
    operator.stop().await;
    assert!(
        deployments.get_opt(FULLNAME).await.unwrap().is_none(),
        "the operator Deployment is gone"
    );
    assert!(
        Api::<ServiceAccount>::namespaced(client.clone(), system.name())
            .get_opt(sa)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<Role>::namespaced(client.clone(), bots_ns)
            .get_opt(FULLNAME)
            .await
            .unwrap()
            .is_none(),
        "the watch Role is gone"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        assert!(
            crds.get_opt(name).await.unwrap().is_some(),
            "helm uninstall kept CRD {name}"
        );
    }
    for (plural, want) in &names {
        let rows: BTreeSet<String> = table(&client, bots_ns, plural)
            .await
            .into_iter()
            .map(|r| r["Name"].clone())
            .collect();
        assert_eq!(&rows, want, "{plural} survive helm uninstall");
    }
    let runtime_deployments = Api::<Deployment>::namespaced(client.clone(), bots_ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        runtime_deployments.items.len(),
        runtime.len(),
        "the bots' Deployments survive helm uninstall"
    );
    phases.mark("helm uninstall kept CRDs and bots");
    drop(runtime);
    let total = phases.start.elapsed();
    eprintln!(
        "[install_flow] phases: {:?}\n[install_flow] total {total:.1?}",
        phases.done
    );
    let _ = std::fs::remove_dir_all(&root);
}
