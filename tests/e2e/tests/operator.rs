//! The operator against the real thing: a kube-apiserver with our CRDs, a controller-manager
//! (Deployments roll out, garbage collection), a scheduler and kwok (pods become Running), and
//! the Kafka broker (admin-mode topics). Each test runs its own operator process watching only
//! its own namespace. Run with `scripts/test.sh` (see docs/testing.md).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use inputbot_api::{ActionBinding, InputBot, Pipeline};
use inputbot_e2e::operator::{OperatorProcess, operator_binary};
use inputbot_e2e::{
    Cluster, TestNamespace, apply_yaml, ensure_project_crds, ensure_thirdparty_crds,
    kafka_bootstrap, repo_root, setting, wait_for, yaml_documents, yaml_files,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::{Value, json};

const READY_TIMEOUT: Duration = Duration::from_secs(90);
const REPAIR_TIMEOUT: Duration = Duration::from_secs(10);

async fn setup(prefix: &str) -> (Cluster, TestNamespace) {
    let cluster = Cluster::connect().await;
    ensure_project_crds(&cluster.client).await;
    let ns = TestNamespace::create(&cluster, prefix).await;
    (cluster, ns)
}

/// The Ready condition of an object's status, with observedGeneration checked.
fn ready(obj: &Value) -> Option<(String, String, String)> {
    let generation = obj["metadata"]["generation"].as_i64()?;
    let status = &obj["status"];
    if status["observedGeneration"].as_i64()? != generation {
        return None;
    }
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
        c["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn condition(obj: &Value, type_: &str) -> Option<(String, String, String)> {
    let c = obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
        c["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn ar(kind: &str) -> ApiResource {
    match kind {
        "InputBot" => ApiResource::erase::<InputBot>(&()),
        "Pipeline" => ApiResource::erase::<Pipeline>(&()),
        _ => ApiResource::erase::<ActionBinding>(&()),
    }
}

async fn get(client: &Client, ns: &str, kind: &str, name: &str) -> Option<Value> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar(kind));
    let obj = api.get_opt(name).await.ok()??;
    serde_json::to_value(obj).ok()
}

/// Waits until `kind/name` is Ready=True for its current generation.
async fn wait_ready(client: &Client, ns: &str, kind: &str, name: &str, timeout: Duration) -> Value {
    wait_for(
        &format!("{kind} {ns}/{name} to be Ready"),
        timeout,
        || async {
            let obj = get(client, ns, kind, name).await?;
            (ready(&obj)?.0 == "True").then_some(obj)
        },
    )
    .await
}

fn kafka_admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        // A metadata request must never create the topic it asks about.
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("a Kafka admin client")
}

/// Partitions of `topic` in the broker, `None` when it does not exist.
async fn partitions(topic: &str) -> Option<usize> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let admin = kafka_admin();
        let md = admin
            .inner()
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .ok()?;
        let t = md.topics().first()?;
        (t.error().is_none() && !t.partitions().is_empty()).then(|| t.partitions().len())
    })
    .await
    .ok()?
}

fn webhook_bot(name: &str, extra_spec: Value) -> Value {
    let mut spec = json!({
        "sources": [{"name": "hook", "webhook": {"path": "/hook", "auth": {"none": {}}}}],
    });
    if let (Value::Object(s), Value::Object(e)) = (&mut spec, extra_spec) {
        s.extend(e);
    }
    json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "InputBot",
           "metadata": {"name": name}, "spec": spec})
}

async fn apply_value(client: &Client, ns: &str, doc: &Value) {
    apply_yaml(client, Some(ns), &serde_yaml::to_string(doc).expect("YAML"))
        .await
        .unwrap_or_else(|e| panic!("applying {}: {e:#}", doc["metadata"]["name"]));
}

/// The Deployments an example's resources should get, by owner kind and name.
fn expected_deployments(docs: &[Value]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for d in docs {
        let name = d["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match d["kind"].as_str() {
            Some("InputBot") => {
                let sources = d["spec"]["sources"].as_array().cloned().unwrap_or_default();
                if sources
                    .iter()
                    .any(|s| s.get("webhook").is_some() || s.get("kafka").is_some())
                {
                    out.insert(("InputBot".into(), name.clone(), format!("{name}-ingest")));
                }
                if sources
                    .iter()
                    .any(|s| s.get("poll").is_some() || s.get("schedule").is_some())
                {
                    out.insert(("InputBot".into(), name.clone(), format!("{name}-poller")));
                }
            }
            Some("Pipeline") => {
                out.insert(("Pipeline".into(), name.clone(), format!("{name}-process")));
            }
            Some("ActionBinding") => {
                out.insert(("ActionBinding".into(), name.clone(), format!("{name}-act")));
            }
            _ => {}
        }
    }
    out
}

/// The operator's API writes by object kind, from its metrics.
async fn writes_by_object(op: &OperatorProcess) -> Vec<String> {
    op.metrics_text()
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("inputbot_operator_api_writes_total"))
        .map(str::to_owned)
        .collect()
}

/// Runs the harness's real kubectl against the harness (KUBECONFIG from its env); stdout.
fn kubectl(args: &[&str]) -> String {
    let bin = setting("INPUTBOT_KUBECTL").unwrap_or_else(|| {
        panic!(
            "INPUTBOT_KUBECTL is not set: run `scripts/tools.sh kubectl` and use the harness env"
        )
    });
    let out = std::process::Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Table view of `kubectl get <plural>`: column names and each row's cells.
async fn table(client: &Client, ns: &str, plural: &str) -> (Vec<String>, Vec<Vec<Value>>) {
    let req = http::Request::get(format!(
        "/apis/inputbot.dev/v1alpha1/namespaces/{ns}/{plural}"
    ))
    .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Vec::new())
    .expect("a request");
    let text = client.request_text(req).await.expect("a Table");
    let t: Value = serde_json::from_str(&text).expect("Table JSON");
    let columns = t["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    let rows = t["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["cells"].as_array().cloned().unwrap_or_default())
        .collect();
    (columns, rows)
}

#[tokio::test]
async fn every_example_gets_exactly_its_children_and_becomes_ready() {
    let (cluster, _) = setup("op-examples").await;
    let client = &cluster.client;
    for file in yaml_files(&repo_root().join("examples")) {
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("x")
            .to_owned();
        let ns = TestNamespace::create(&cluster, &format!("op-ex-{stem}")).await;
        let _op = OperatorProcess::start(ns.name(), "op", &[]);
        let text = std::fs::read_to_string(&file).expect("the example");
        let docs = yaml_documents(&text).expect("YAML");
        apply_yaml(client, Some(ns.name()), &text)
            .await
            .unwrap_or_else(|e| panic!("applying {}: {e:#}", file.display()));

        let mut uids = std::collections::HashMap::new();
        for d in docs
            .iter()
            .filter(|d| d["apiVersion"] == "inputbot.dev/v1alpha1")
        {
            let kind = d["kind"].as_str().expect("kind");
            let name = d["metadata"]["name"].as_str().expect("name");
            let obj = wait_ready(client, ns.name(), kind, name, READY_TIMEOUT).await;
            assert_eq!(ready(&obj).unwrap().1, "Ready", "{kind} {name}");
            for t in ["ReferencesResolved", "TopicsReady", "WorkloadReady"] {
                assert_eq!(
                    condition(&obj, t).map(|c| c.0),
                    Some("True".into()),
                    "{kind} {name} condition {t}: {}",
                    obj["status"]
                );
            }
            uids.insert(
                (kind.to_owned(), name.to_owned()),
                obj["metadata"]["uid"].as_str().unwrap().to_owned(),
            );
        }

        // Exactly the expected Deployments, each with a ConfigMap of the same name, owned by
        // its resource, labelled, restricted and rolled out.
        let expected = expected_deployments(&docs);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
        let list = deployments
            .list(&ListParams::default())
            .await
            .expect("Deployments");
        let names: BTreeSet<String> = list.items.iter().map(|d| d.name_any()).collect();
        let want: BTreeSet<String> = expected.iter().map(|e| e.2.clone()).collect();
        assert_eq!(names, want, "{}: Deployments", file.display());
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
        for (kind, owner, name) in &expected {
            let d = list.items.iter().find(|d| &d.name_any() == name).unwrap();
            let refs = d.owner_references();
            assert_eq!(refs.len(), 1, "{name}");
            assert_eq!(refs[0].kind, *kind);
            assert_eq!(refs[0].uid, uids[&(kind.clone(), owner.clone())]);
            assert_eq!(refs[0].controller, Some(true));
            let labels = d.labels();
            for l in ["name", "instance", "component", "part-of", "managed-by"] {
                assert!(
                    labels.contains_key(&format!("app.kubernetes.io/{l}")),
                    "{name} label {l}"
                );
            }
            let spec = d.spec.as_ref().unwrap();
            let pod = spec.template.spec.as_ref().unwrap();
            let c = &pod.containers[0];
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.run_as_non_root, Some(true));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(c.image.as_deref(), Some("inputbot/inputbot:e2e"));
            let args = c.args.clone().unwrap_or_default();
            assert!(args.contains(&"--config".to_owned()), "{args:?}");
            assert!(
                spec.template
                    .metadata
                    .as_ref()
                    .unwrap()
                    .annotations
                    .as_ref()
                    .unwrap()
                    .contains_key("inputbot.dev/config-hash")
            );
            let status = d.status.as_ref().unwrap();
            assert!(
                status.available_replicas.unwrap_or(0) >= 1,
                "{name} is not available"
            );
            let cm = configmaps
                .get(name)
                .await
                .unwrap_or_else(|e| panic!("ConfigMap {name}: {e}"));
            let config: Value = serde_json::from_str(&cm.data.unwrap()["component.json"]).unwrap();
            assert!(config["role"].is_string(), "{config}");
        }
        // Secret values of the example never reach a ConfigMap.
        for d in docs.iter().filter(|d| d["kind"] == "Secret") {
            for v in d["stringData"].as_object().into_iter().flatten() {
                let secret = v.1.as_str().unwrap();
                for cm in configmaps.list(&ListParams::default()).await.unwrap().items {
                    let text = serde_json::to_string(&cm.data).unwrap();
                    assert!(
                        !text.contains(secret),
                        "a Secret value is in ConfigMap {}",
                        cm.name_any()
                    );
                }
            }
        }
        // `kubectl get inputbot` shows Ready, reason and endpoint.
        let (columns, rows) = table(client, ns.name(), "inputbots").await;
        let col = |n: &str| {
            columns
                .iter()
                .position(|c| c == n)
                .unwrap_or_else(|| panic!("column {n} in {columns:?}"))
        };
        for row in &rows {
            if row[col("Ready")] != "True" || row[col("Reason")] != "Ready" {
                let name = row[0].as_str().unwrap_or_default();
                let obj = get(client, ns.name(), "InputBot", name).await;
                panic!(
                    "{row:?}: status {}",
                    obj.map(|o| o["status"].clone()).unwrap_or_default()
                );
            }
        }
        // And the real kubectl, by the singular kind and a name, as a user types it (the
        // category once shadowed the kind), and by the category for all three kinds.
        for row in &rows {
            let name = row[0].as_str().unwrap_or_default();
            let out = kubectl(&["get", "inputbot", name, "-n", ns.name()]);
            let mut lines = out.lines();
            let header: Vec<&str> = lines
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect();
            let cells: Vec<&str> = lines
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect();
            assert_eq!(
                &header[..4],
                ["NAME", "READY", "REASON", "ENDPOINT"],
                "kubectl get inputbot {name}:\n{out}"
            );
            assert_eq!(
                &cells[..3],
                [name, "True", "Ready"],
                "kubectl get inputbot {name}:\n{out}"
            );
        }
        // The category lists the three kinds: every resource of the example, by name.
        let all = kubectl(&["get", "inputbot-all", "-n", ns.name(), "-o", "name"]);
        let listed: BTreeSet<String> = all.lines().map(str::to_owned).collect();
        let applied: BTreeSet<String> = docs
            .iter()
            .filter(|d| d["apiVersion"] == "inputbot.dev/v1alpha1")
            .map(|d| {
                format!(
                    "{}.inputbot.dev/{}",
                    d["kind"].as_str().unwrap_or_default().to_ascii_lowercase(),
                    d["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(listed, applied, "kubectl get inputbot-all:\n{all}");
        let services: Api<Service> = Api::namespaced(client.clone(), ns.name());
        for (kind, owner, name) in &expected {
            if kind == "InputBot" && name.ends_with("-ingest") {
                let row = rows.iter().find(|r| r[0] == owner.as_str()).unwrap();
                let endpoint = row[col("Endpoint")].as_str().unwrap_or_default();
                assert!(
                    endpoint.starts_with(&format!("http://{name}.{}.svc:8080/", ns.name())),
                    "{endpoint}"
                );
                services
                    .get(name)
                    .await
                    .unwrap_or_else(|e| panic!("Service {name}: {e}"));
            }
        }
    }
}

#[tokio::test]
async fn spec_changes_roll_and_edited_or_deleted_children_are_repaired() {
    let (cluster, ns) = setup("op-drift").await;
    let client = &cluster.client;
    let op = OperatorProcess::start(ns.name(), "op", &[]);
    let n = ns.name();
    apply_value(
        client,
        n,
        &webhook_bot(
            "b",
            json!({"ingest": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}}),
        ),
    )
    .await;
    apply_value(
        client,
        n,
        &json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "Pipeline",
        "metadata": {"name": "p"}, "spec": {"botRef": {"name": "b"},
        "steps": [{"filter": {"when": "has(data.x)"}}]}}),
    )
    .await;
    wait_ready(client, n, "InputBot", "b", READY_TIMEOUT).await;
    wait_ready(client, n, "Pipeline", "p", READY_TIMEOUT).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), n);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), n);
    let hpa = hpas.get("b-ingest").await.expect("the ingest HPA");
    assert_eq!(hpa.spec.as_ref().unwrap().scale_target_ref.name, "b-ingest");
    assert_eq!(hpa.spec.as_ref().unwrap().max_replicas, 3);

    // A no-op reconcile writes nothing: touch an annotation of the ingest Deployment (its
    // owner reconciles — the metadata changed — but nothing it renders did).
    // Let the rollout settle (Deployment and HPA status changes reconcile too): until the
    // write count stays put for 3 s.
    let mut writes = op
        .metric("inputbot_operator_api_writes_total")
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = op
            .metric("inputbot_operator_api_writes_total")
            .await
            .unwrap();
        if now == writes {
            break;
        }
        writes = now;
    }
    let reconciles = op
        .metric("inputbot_operator_reconciles_total")
        .await
        .unwrap();
    let before_touch = writes_by_object(&op).await;
    Api::<Deployment>::namespaced(client.clone(), n)
        .patch(
            "b-ingest",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await
        .unwrap();
    wait_for("a reconcile after the touch", REPAIR_TIMEOUT, || async {
        (op.metric("inputbot_operator_reconciles_total").await? > reconciles).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        op.metric("inputbot_operator_api_writes_total")
            .await
            .unwrap(),
        writes,
        "a reconcile that changes nothing wrote to the API server: before the touch {before_touch:?}, after {:?}",
        writes_by_object(&op).await
    );

    // A spec change rolls the Deployment: new config hash, new ReplicaSet.
    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["inputbot.dev/config-hash"]
            .clone()
    };
    let before = hash(&deployments.get("p-process").await.unwrap());
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), n);
    pipelines
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"steps": [
            {"filter": {"when": "has(data.y)"}}]}})),
        )
        .await
        .unwrap();
    let after = wait_for("a new config hash", REPAIR_TIMEOUT, || async {
        let h = hash(&deployments.get("p-process").await.ok()?);
        (h != before).then_some(h)
    })
    .await;
    assert_ne!(before, after);
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), n);
    wait_for(
        "a second ReplicaSet of p-process",
        REPAIR_TIMEOUT,
        || async {
            let rs = replicasets.list(&ListParams::default()).await.ok()?;
            let owned = rs
                .items
                .iter()
                .filter(|r| r.owner_references().iter().any(|o| o.name == "p-process"))
                .count();
            (owned >= 2).then_some(())
        },
    )
    .await;
    wait_ready(client, n, "Pipeline", "p", READY_TIMEOUT).await;

    // A deleted Deployment comes back (a new object), within 10 s.
    let old_uid = deployments.get("b-ingest").await.unwrap().uid();
    deployments
        .delete("b-ingest", &DeleteParams::default())
        .await
        .unwrap();
    let started = Instant::now();
    wait_for("b-ingest to be recreated", REPAIR_TIMEOUT, || async {
        let d = deployments.get_opt("b-ingest").await.ok()??;
        (d.uid() != old_uid && d.metadata.deletion_timestamp.is_none()).then_some(())
    })
    .await;
    eprintln!("deleted Deployment repaired in {:?}", started.elapsed());

    // An edited Deployment is put back (the operator's fields win), within 10 s.
    let services: Api<Service> = Api::namespaced(client.clone(), n);
    deployments
        .patch(
            "p-process",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    wait_for("p-process back at 1 replica", REPAIR_TIMEOUT, || async {
        let d = deployments.get("p-process").await.ok()?;
        (d.spec?.replicas == Some(1)).then_some(())
    })
    .await;
    services
        .patch(
            "b-ingest",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"selector": {"app.kubernetes.io/component": "elsewhere"}}}),
            ),
        )
        .await
        .unwrap();
    wait_for(
        "the Service selector back on the ingest pods",
        REPAIR_TIMEOUT,
        || async {
            let s = services.get("b-ingest").await.ok()?;
            (s.spec?
                .selector?
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                == Some("ingest"))
            .then_some(())
        },
    )
    .await;

    // Removing autoscaling deletes the HPA.
    let bots: Api<InputBot> = Api::namespaced(client.clone(), n);
    bots.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"ingest": null}})),
    )
    .await
    .unwrap();
    wait_for("the HPA to be pruned", REPAIR_TIMEOUT, || async {
        hpas.get_opt("b-ingest").await.ok()?.is_none().then_some(())
    })
    .await;
    wait_ready(client, n, "InputBot", "b", READY_TIMEOUT).await;
}

#[tokio::test]
async fn a_pipeline_waits_for_its_bot_and_an_invalid_expression_is_reported() {
    let (cluster, ns) = setup("op-refs").await;
    let client = &cluster.client;
    let _op = OperatorProcess::start(ns.name(), "op", &[]);
    let n = ns.name();
    apply_value(
        client,
        n,
        &json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "Pipeline",
        "metadata": {"name": "early"}, "spec": {"botRef": {"name": "later"},
        "steps": [{"transform": {"jq": "."}}]}}),
    )
    .await;
    let obj = wait_for(
        "ReferencesResolved=False on the pipeline",
        READY_TIMEOUT,
        || async {
            let obj = get(client, n, "Pipeline", "early").await?;
            (condition(&obj, "ReferencesResolved")?.0 == "False").then_some(obj)
        },
    )
    .await;
    let (_, reason, message) = condition(&obj, "ReferencesResolved").unwrap();
    assert_eq!(reason, "ReferenceNotFound");
    assert!(
        message.contains("spec.botRef") && message.contains("later"),
        "{message}"
    );
    assert_eq!(ready(&obj).unwrap().0, "False");

    apply_value(client, n, &webhook_bot("later", json!({}))).await;
    wait_ready(client, n, "Pipeline", "early", READY_TIMEOUT).await;

    // CEL that the schema cannot check: Ready=False naming the field, with a Warning Event.
    apply_value(
        client,
        n,
        &json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "Pipeline",
        "metadata": {"name": "typo"}, "spec": {"botRef": {"name": "later"},
        "steps": [{"classify": {"rules": [{"when": "data.text ==", "label": "x"}]}}]}}),
    )
    .await;
    let obj = wait_for(
        "Ready=False on the invalid pipeline",
        READY_TIMEOUT,
        || async {
            let obj = get(client, n, "Pipeline", "typo").await?;
            (ready(&obj)?.0 == "False").then_some(obj)
        },
    )
    .await;
    let (_, reason, message) = ready(&obj).unwrap();
    assert_eq!(reason, "InvalidSpec", "{message}");
    assert!(
        message.contains("spec.steps[0].classify.rules[0].when"),
        "{message}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), n);
    assert!(deployments.get_opt("typo-process").await.unwrap().is_none());
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), n);
    wait_for(
        "a Warning Event on the invalid pipeline",
        REPAIR_TIMEOUT,
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("InvalidSpec")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("typo")
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn admin_mode_creates_and_grows_topics_and_honours_the_deletion_policy() {
    let (cluster, ns) = setup("op-topics").await;
    let client = &cluster.client;
    let _op = OperatorProcess::start(ns.name(), "op", &[]);
    let n = ns.name();
    apply_value(
        client,
        n,
        &webhook_bot("keep", json!({"topic": {"partitions": 3}})),
    )
    .await;
    apply_value(
        client,
        n,
        &webhook_bot("drop", json!({"deletionPolicy": "Delete"})),
    )
    .await;
    let keep_topic = format!("inputbot.{n}.keep.raw");
    let drop_topic = format!("inputbot.{n}.drop.raw");
    let obj = wait_ready(client, n, "InputBot", "keep", READY_TIMEOUT).await;
    assert_eq!(obj["status"]["topic"], keep_topic.as_str());
    assert_eq!(partitions(&keep_topic).await, Some(3));
    let drop = wait_ready(client, n, "InputBot", "drop", READY_TIMEOUT).await;
    assert_eq!(
        partitions(&drop_topic).await,
        Some(2),
        "the operator's default partitions"
    );
    assert!(
        drop["metadata"]["finalizers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "inputbot.dev/topics")
    );
    assert!(
        obj["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty()),
        "Retain needs no finalizer"
    );

    // Grow: 3 → 5 partitions.
    let bots: Api<InputBot> = Api::namespaced(client.clone(), n);
    bots.patch(
        "keep",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"topic": {"partitions": 5}}})),
    )
    .await
    .unwrap();
    wait_for(
        "the raw topic to grow to 5 partitions",
        READY_TIMEOUT,
        || async { (partitions(&keep_topic).await? == 5).then_some(()) },
    )
    .await;

    // Delete: Retain keeps the topic, Delete removes it.
    bots.delete("keep", &DeleteParams::default()).await.unwrap();
    bots.delete("drop", &DeleteParams::default()).await.unwrap();
    wait_for("both bots gone", READY_TIMEOUT, || async {
        let a = bots.get_opt("keep").await.ok()?;
        let b = bots.get_opt("drop").await.ok()?;
        (a.is_none() && b.is_none()).then_some(())
    })
    .await;
    wait_for(
        "the Delete bot's topic to be gone",
        READY_TIMEOUT,
        || async { partitions(&drop_topic).await.is_none().then_some(()) },
    )
    .await;
    assert_eq!(
        partitions(&keep_topic).await,
        Some(5),
        "Retain kept the topic"
    );
}

#[tokio::test]
async fn strimzi_mode_writes_kafka_topics_and_keda_lag_scaling_writes_scaled_objects() {
    let (cluster, ns) = setup("op-strimzi").await;
    let client = &cluster.client;
    ensure_thirdparty_crds(client).await;
    let n = ns.name();
    let _op = OperatorProcess::start(
        n,
        "op",
        &["--topic-mode", "strimzi", "--strimzi-cluster", "my-kafka"],
    );
    apply_value(
        client,
        n,
        &webhook_bot(
            "s",
            json!({"topic": {"partitions": 4, "retention": "1d"}, "deletionPolicy": "Delete"}),
        ),
    )
    .await;
    apply_value(client, n, &json!({"apiVersion": "inputbot.dev/v1alpha1", "kind": "Pipeline",
        "metadata": {"name": "lag"}, "spec": {"botRef": {"name": "s"}, "steps": [{"transform": {"jq": "."}}],
        "processing": {"autoscaling": {"minReplicas": 1, "maxReplicas": 8, "lag": {"target": 100}}}}})).await;

    let topics = ApiResource {
        group: "kafka.strimzi.io".into(),
        version: "v1beta2".into(),
        api_version: "kafka.strimzi.io/v1beta2".into(),
        kind: "KafkaTopic".into(),
        plural: "kafkatopics".into(),
    };
    let kt: Api<DynamicObject> = Api::namespaced_with(client.clone(), n, &topics);
    let topic_name = format!("inputbot.{n}.s.raw");
    let obj = wait_for("the KafkaTopic of the bot", READY_TIMEOUT, || async {
        kt.get_opt(&topic_name).await.ok()?
    })
    .await;
    let v = serde_json::to_value(&obj).unwrap();
    assert_eq!(v["metadata"]["labels"]["strimzi.io/cluster"], "my-kafka");
    assert_eq!(v["spec"]["partitions"], 4);
    assert_eq!(v["spec"]["config"]["retention.ms"], "86400000");
    // Not Ready until Strimzi's topic operator (played by the test) says so.
    let bot = wait_for(
        "TopicsReady=False while Strimzi has not reconciled",
        READY_TIMEOUT,
        || async {
            let o = get(client, n, "InputBot", "s").await?;
            (condition(&o, "TopicsReady")?.0 == "False").then_some(o)
        },
    )
    .await;
    assert_eq!(ready(&bot).unwrap().1, "TopicsNotReady");
    for t in [
        topic_name.clone(),
        format!("inputbot.{n}.s.dedupe"),
        format!("inputbot.{n}.lag.out"),
        format!("inputbot.{n}.lag.dlq"),
    ] {
        let o = wait_for(&format!("KafkaTopic {t}"), READY_TIMEOUT, || async {
            kt.get_opt(&t).await.ok()?
        })
        .await;
        let generation = o.metadata.generation.unwrap_or(1);
        kt.patch_status(&t, &PatchParams::default(), &Patch::Merge(json!({"status": {
            "observedGeneration": generation,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})))
            .await
            .unwrap_or_else(|e| panic!("status of KafkaTopic {t}: {e}"));
    }
    wait_ready(client, n, "InputBot", "s", READY_TIMEOUT).await;

    // Lag autoscaling with KEDA's CRD installed: a ScaledObject the real CRD accepts, capped
    // at the input topic's 4 partitions.
    let so = ApiResource {
        group: "keda.sh".into(),
        version: "v1alpha1".into(),
        api_version: "keda.sh/v1alpha1".into(),
        kind: "ScaledObject".into(),
        plural: "scaledobjects".into(),
    };
    let sos: Api<DynamicObject> = Api::namespaced_with(client.clone(), n, &so);
    let obj = wait_for(
        "the ScaledObject of the pipeline",
        READY_TIMEOUT,
        || async { sos.get_opt("lag-process").await.ok()? },
    )
    .await;
    let v = serde_json::to_value(&obj).unwrap();
    assert_eq!(v["spec"]["scaleTargetRef"]["name"], "lag-process");
    assert_eq!(v["spec"]["maxReplicaCount"], 4, "capped at the partitions");
    assert_eq!(v["spec"]["triggers"][0]["type"], "kafka");
    assert_eq!(
        v["spec"]["triggers"][0]["metadata"]["topic"],
        topic_name.as_str()
    );
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), n);
    assert!(
        hpas.get_opt("lag-process").await.unwrap().is_none(),
        "no HPA of our own beside KEDA's"
    );
    let p = wait_ready(client, n, "Pipeline", "lag", READY_TIMEOUT).await;
    assert_eq!(
        condition(&p, "AutoscalingReady").map(|c| c.0),
        Some("True".into())
    );

    // deletionPolicy Delete removes the KafkaTopic with the bot.
    let bots: Api<InputBot> = Api::namespaced(client.clone(), n);
    bots.delete("s", &DeleteParams::default()).await.unwrap();
    wait_for(
        "the bot's KafkaTopic to be deleted",
        READY_TIMEOUT,
        || async { kt.get_opt(&topic_name).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn an_operator_killed_while_creating_200_bots_converges_without_duplicates_or_orphans() {
    let (cluster, ns) = setup("op-kill").await;
    let client = &cluster.client;
    let n = ns.name();
    const BOTS: usize = 200;
    let mut op = OperatorProcess::start(n, "op", &["--concurrency", "16"]);
    let bot_api: Api<InputBot> = Api::namespaced(client.clone(), n);
    let started = Instant::now();
    let applies =
        futures::stream::iter(0..BOTS)
            .map(|i| {
                let client = client.clone();
                async move {
                    apply_value(&client, n, &webhook_bot(&format!("bot-{i:03}"), json!({}))).await
                }
            })
            .buffer_unordered(16);
    use futures::StreamExt as _;
    applies.collect::<Vec<_>>().await;
    // Kill it mid-way: once some but not all Deployments exist.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), n);
    wait_for("some Deployments", READY_TIMEOUT, || async {
        let c = deployments
            .list_metadata(&ListParams::default())
            .await
            .ok()?
            .items
            .len();
        (c >= 10).then_some(())
    })
    .await;
    op.kill();
    let at_kill = deployments
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    eprintln!(
        "killed the operator with {at_kill}/{BOTS} Deployments after {:?}",
        started.elapsed()
    );
    let _op = OperatorProcess::start_with(op.args.clone());
    wait_for("every bot Ready", Duration::from_secs(240), || async {
        let list = bot_api.list(&ListParams::default()).await.ok()?;
        let ready_count = list
            .items
            .iter()
            .filter(|b| ready(&serde_json::to_value(b).unwrap()).is_some_and(|r| r.0 == "True"))
            .count();
        (ready_count == BOTS).then_some(())
    })
    .await;
    eprintln!("{BOTS} bots Ready after {:?}", started.elapsed());
    let uids: BTreeSet<String> = bot_api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|b| b.uid().unwrap())
        .collect();
    let check = |kind: &str,
                 items: Vec<(
        String,
        Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    )>| {
        let names: BTreeSet<&String> = items.iter().map(|i| &i.0).collect();
        assert_eq!(names.len(), items.len(), "duplicate {kind}s");
        assert_eq!(items.len(), BOTS, "{kind}s: {}", items.len());
        for (name, refs) in &items {
            assert!(
                refs.iter().any(|r| uids.contains(&r.uid)),
                "orphaned {kind} {name}"
            );
        }
    };
    let meta = |l: kube::core::ObjectList<kube::core::PartialObjectMeta<Deployment>>| {
        l.items
            .into_iter()
            .map(|i| (i.name_any(), i.owner_references().to_vec()))
            .collect::<Vec<_>>()
    };
    check(
        "Deployment",
        meta(
            deployments
                .list_metadata(&ListParams::default())
                .await
                .unwrap(),
        ),
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), n);
    let cm_items: Vec<_> = cms
        .list_metadata(
            &ListParams::default().labels("app.kubernetes.io/managed-by=inputbot-operator"),
        )
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| (i.name_any(), i.owner_references().to_vec()))
        .collect();
    check("ConfigMap", cm_items);
    let svcs: Api<Service> = Api::namespaced(client.clone(), n);
    let svc_items: Vec<_> = svcs
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| (i.name_any(), i.owner_references().to_vec()))
        .collect();
    check("Service", svc_items);
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_writes_and_the_standby_takes_over() {
    let (cluster, ns) = setup("op-leader").await;
    let client = &cluster.client;
    let n = ns.name();
    let mut a = OperatorProcess::start(n, "shared-lease", &[]);
    let mut b = OperatorProcess::start(n, "shared-lease", &[]);
    let leader = wait_for("one replica to lead", READY_TIMEOUT, || async {
        let la = a.metric("inputbot_operator_leader").await?;
        let lb = b.metric("inputbot_operator_leader").await?;
        match (la as i64, lb as i64) {
            (1, 0) => Some('a'),
            (0, 1) => Some('b'),
            _ => None,
        }
    })
    .await;
    apply_value(client, n, &webhook_bot("first", json!({}))).await;
    wait_ready(client, n, "InputBot", "first", READY_TIMEOUT).await;
    let (lead, standby) = if leader == 'a' {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert!(
        lead.metric("inputbot_operator_api_writes_total")
            .await
            .unwrap()
            > 0.0
    );
    assert_eq!(
        standby
            .metric("inputbot_operator_api_writes_total")
            .await
            .unwrap_or(0.0),
        0.0,
        "the standby wrote"
    );
    assert_eq!(
        standby
            .metric("inputbot_operator_reconciles_total")
            .await
            .unwrap_or(0.0),
        0.0
    );

    lead.kill();
    let killed = Instant::now();
    wait_for("the standby to lead", Duration::from_secs(20), || async {
        (standby.metric("inputbot_operator_leader").await? as i64 == 1).then_some(())
    })
    .await;
    let took = killed.elapsed();
    eprintln!("the standby took over {took:?} after the leader's death");
    assert!(took <= Duration::from_secs(20));
    apply_value(client, n, &webhook_bot("second", json!({}))).await;
    wait_ready(client, n, "InputBot", "second", READY_TIMEOUT).await;
    assert!(standby.running());
}

#[tokio::test]
async fn rendered_examples_pass_a_server_side_dry_run() {
    let (cluster, ns) = setup("op-render").await;
    let client = &cluster.client;
    for file in yaml_files(&repo_root().join("examples")) {
        let out = std::process::Command::new(operator_binary())
            .args(["render", "-n", ns.name(), "-f"])
            .arg(&file)
            .output()
            .expect("inputbot-operator render");
        assert!(
            out.status.success(),
            "render {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let docs = yaml_documents(&String::from_utf8_lossy(&out.stdout)).expect("YAML");
        assert!(
            !docs.is_empty(),
            "render printed nothing for {}",
            file.display()
        );
        for doc in docs {
            let gvk = inputbot_e2e::gvk_of(&doc).unwrap();
            let (resource, _) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), ns.name(), &resource);
            let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
            api.patch(
                &name,
                &PatchParams::apply("inputbot-e2e").dry_run(),
                &Patch::Apply(&doc),
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "dry run of {} {name} from {}: {e}",
                    gvk.kind,
                    file.display()
                )
            });
        }
    }
}
