//! The runtime half of the flow: every Deployment the operator rendered, run as a local
//! process exactly as its container is specified (or, on a cluster with real nodes, by the
//! cluster), and the events a user sends through them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use inputbot_e2e::Cluster;
use inputbot_e2e::pod::{LocalProcess, current_pod, plan};
use inputbot_e2e::receiver::Receiver;
use inputbot_e2e::runtime::{Record, read_topic};
use inputbot_e2e::smtp::MailSink;
use inputbot_runtime::dlq::DeadLetter;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use super::FLOW_TIMEOUT;
use super::examples::{self, github_headers, helpdesk_headers, post};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;

/// Where the runtime runs: local processes (kwok's nodes run nothing), or the cluster's
/// own pods (`INPUTBOT_E2E_REAL_PODS=1`: kind, k3d, with real images).
pub enum Runtime {
    /// A local process per Deployment, by Deployment name.
    Local(BTreeMap<String, LocalProcess>),
    /// The cluster's pods, reached through the API server (service proxy, pod logs).
    Pods {
        client: Client,
        ns: String,
        deployments: BTreeSet<String>,
    },
}

impl Runtime {
    pub fn len(&self) -> usize {
        match self {
            Runtime::Local(p) => p.len(),
            Runtime::Pods { deployments, .. } => deployments.len(),
        }
    }

    fn local(&self, deployment: &str) -> Option<&LocalProcess> {
        match self {
            Runtime::Local(p) => Some(p.get(deployment).unwrap_or_else(|| {
                panic!("no Deployment {deployment} was rendered: {:?}", p.keys())
            })),
            Runtime::Pods { .. } => None,
        }
    }

    /// The resolved config the component runs with: the mounted ConfigMap file (local), or
    /// the ConfigMap.
    async fn config(&self, deployment: &str) -> Value {
        let text = match self {
            Runtime::Local(_) => {
                let p = self.local(deployment).unwrap();
                std::fs::read_to_string(p.plan.root.join("etc/inputbot/component.json"))
                    .expect("the mounted config")
            }
            Runtime::Pods { client, ns, .. } => Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get(deployment)
                .await
                .expect("the component's ConfigMap")
                .data
                .and_then(|mut d| d.remove("component.json"))
                .expect("component.json"),
        };
        serde_json::from_str(&text).expect("config JSON")
    }

    /// POSTs to the ingest `deployment` (its Service of the same name): on its loopback port,
    /// or through the API server's service proxy.
    async fn post(
        &self,
        deployment: &str,
        path: &str,
        headers: &[(String, String)],
        body: &str,
    ) -> (u16, String) {
        match self {
            Runtime::Local(_) => {
                post(
                    &self.local(deployment).unwrap().url("http", path),
                    headers,
                    body,
                )
                .await
            }
            Runtime::Pods { client, ns, .. } => {
                let mut req = http::Request::post(format!(
                    "/api/v1/namespaces/{ns}/services/{deployment}:http/proxy{path}"
                ));
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                let req = req
                    .body(kube::client::Body::from(body.as_bytes().to_vec()))
                    .expect("a request");
                let resp = client.send(req).await.unwrap_or_else(|e| {
                    panic!("POST {path} to {deployment} via the API server: {e}")
                });
                let status = resp.status().as_u16();
                let bytes = resp.into_body().collect_bytes().await.unwrap_or_default();
                (status, String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }

    /// What the component logged so far (every pod's log, in the cluster).
    async fn log(&self, deployment: &str) -> String {
        match self {
            Runtime::Local(_) => self.local(deployment).unwrap().log_text(),
            Runtime::Pods { client, ns, .. } => {
                let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
                let d = Api::<Deployment>::namespaced(client.clone(), ns)
                    .get(deployment)
                    .await
                    .expect("the Deployment");
                let selector = d
                    .spec
                    .unwrap()
                    .selector
                    .match_labels
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                let mut text = String::new();
                for p in pods
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .expect("pods")
                    .items
                {
                    text.push_str(
                        &pods
                            .logs(&p.name_any(), &Default::default())
                            .await
                            .unwrap_or_default(),
                    );
                }
                text
            }
        }
    }
}

/// Starts the runtime (see [`Runtime`]) and waits until every component is ready.
pub async fn start_runtime(cluster: &Cluster, ns: &str, root: &Path, real_pods: bool) -> Runtime {
    if real_pods {
        return wait_pods(cluster, ns).await;
    }
    start_local(cluster, ns, root).await
}

/// The cluster runs the pods: wait until each Deployment is available.
async fn wait_pods(cluster: &Cluster, ns: &str) -> Runtime {
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let deployments = inputbot_e2e::wait_for(
        "13 runtime Deployments available",
        Duration::from_secs(180),
        || async {
            let list = api
                .list(
                    &ListParams::default().labels("app.kubernetes.io/managed-by=inputbot-operator"),
                )
                .await
                .ok()?;
            let available = list.items.iter().filter(|d| {
                let s = d.status.clone().unwrap_or_default();
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                s.available_replicas.unwrap_or(0) >= want && s.updated_replicas.unwrap_or(0) >= want
            });
            let names: BTreeSet<String> = available.map(|d| d.name_any()).collect();
            (names.len() == 13).then_some(names)
        },
    )
    .await;
    Runtime::Pods {
        client: cluster.client.clone(),
        ns: ns.to_owned(),
        deployments,
    }
}

/// Starts a local process for every Deployment in `ns` and waits until each is ready.
async fn start_local(cluster: &Cluster, ns: &str, root: &Path) -> Runtime {
    let client = &cluster.client;
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=inputbot-operator"))
        .await
        .expect("the rendered Deployments");
    assert_eq!(
        deployments.items.len(),
        13,
        "Deployments of the four examples"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut processes = BTreeMap::new();
    for d in &deployments.items {
        let name = d.name_any();
        let pod = current_pod(client, d, Duration::from_secs(60))
            .await
            .expect("a Running pod");
        let plan = plan(client, d, &pod, &root.join(&name))
            .await
            .expect("a plan");
        assert_eq!(
            plan.rewritten(),
            [
                "/etc/inputbot/component.json",
                "/tmp",
                "/var/run/inputbot/secrets",
                "0.0.0.0:8080"
            ],
            "{name}: exactly these are rewritten: {:#?}",
            plan.rewrites
        );
        let container = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        let args = container.args.clone().unwrap_or_default();
        assert_eq!(plan.args.len(), args.len());
        let role = args
            .iter()
            .find(|a| matches!(a.as_str(), "ingest" | "process" | "act"))
            .expect("a role");
        assert!(
            plan.args.contains(role),
            "{name}: the role argument is verbatim"
        );
        let names: BTreeSet<String> = container
            .env
            .iter()
            .flatten()
            .map(|e| e.name.clone())
            .collect();
        let mut planned: BTreeSet<String> = plan.env.keys().cloned().collect();
        assert!(planned.remove("TMPDIR"));
        assert_eq!(planned, names, "{name}: the container's env, and only it");
        assert_eq!(plan.env["POD_NAME"], pod.name_any());
        // The mounted config is the ConfigMap's, byte for byte.
        let cm = configmaps
            .get(&name)
            .await
            .expect("the component's ConfigMap");
        let mounted = std::fs::read_to_string(plan.root.join("etc/inputbot/component.json"))
            .expect("the mounted config");
        assert_eq!(
            Some(&mounted),
            cm.data.as_ref().and_then(|d| d.get("component.json")),
            "{name}"
        );
        processes.insert(name, LocalProcess::spawn(plan, &[]));
    }
    for p in processes.values_mut() {
        p.wait_ready(Duration::from_secs(60)).await;
    }
    Runtime::Local(processes)
}

/// Waits until `needle` is in a component's log, or panics after `timeout`.
async fn wait_log(rt: &Runtime, deployment: &str, what: &str, timeout: Duration, needle: &str) {
    let start = Instant::now();
    loop {
        let log = rt.log(deployment).await;
        if log.contains(needle) {
            return;
        }
        if start.elapsed() > timeout {
            panic!("{deployment}: no {what} ({needle}) in its log within {timeout:?}:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `topic` holds at least `n` records and returns them all.
async fn wait_records(bootstrap: &str, topic: &str, n: usize) -> Vec<Record> {
    let start = Instant::now();
    loop {
        // rdkafka's reader blocks: off the async workers.
        let records = tokio::task::block_in_place(|| read_topic(bootstrap, topic));
        if records.len() >= n {
            return records;
        }
        assert!(
            start.elapsed() < FLOW_TIMEOUT,
            "{} record(s) on {topic} after {FLOW_TIMEOUT:?}, expected {n}",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Sends each example what its users would, and checks what comes out.
pub async fn drive_examples(rt: &Runtime, outside: &Receiver, mail: &MailSink, bootstrap: &str) {
    tokio::join!(
        quickstart(rt),
        github(rt, outside),
        support(rt, outside, bootstrap),
        status_page(outside, mail),
    );
}

async fn quickstart(rt: &Runtime) {
    let (ingest, path) = ("quickstart-ingest", "/github");
    let body = json!({"action": "opened", "issue": {"number": 42, "title": "App crash on login", "user": {"login": "octocat"}}}).to_string();
    let (status, answer) = rt
        .post(
            ingest,
            path,
            &github_headers(examples::QUICKSTART_KEY, &body, &uuid()),
            &body,
        )
        .await;
    assert_eq!(status, 202, "a signed quickstart webhook: {answer}");
    let (status, _) = rt
        .post(
            ingest,
            path,
            &github_headers("not-the-key", &body, &uuid()),
            &body,
        )
        .await;
    assert_eq!(status, 401, "a wrongly signed quickstart webhook");
    // The log action prints its line on stdout, beside the JSON log.
    let line = "\nissue #42 \"App crash on login\" by octocat → labels bug\n";
    wait_log(
        rt,
        "quickstart-log-act",
        "log action line",
        FLOW_TIMEOUT,
        line,
    )
    .await;
}

async fn github(rt: &Runtime, outside: &Receiver) {
    // The chat URL reaches the act process only as the mounted Secret file.
    if let Some(act) = rt.local("triage-chat-act") {
        let mounted = std::fs::read_to_string(
            act.plan
                .root
                .join("var/run/inputbot/secrets/chat-webhook/url"),
        )
        .expect("the mounted chat-webhook Secret");
        assert_eq!(mounted, outside.url("/hooks/github-chat"));
    }
    let (ingest, path) = ("github-ingest", "/github");
    let issue = |action: &str, n: u32, title: &str| {
        json!({"action": action, "issue": {"number": n, "title": title, "body": "it panics at start",
               "html_url": format!("https://github.com/acme/app/issues/{n}"), "user": {"login": "octocat"}},
               "repository": {"full_name": "acme/app"}}).to_string()
    };
    let closed = issue("closed", 6, "Old crash");
    let (status, answer) = rt
        .post(
            ingest,
            path,
            &github_headers(examples::GITHUB_KEY, &closed, &uuid()),
            &closed,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let opened = issue("opened", 7, "Crash on start");
    let delivery = uuid();
    let (status, answer) = rt
        .post(
            ingest,
            path,
            &github_headers(examples::GITHUB_KEY, &opened, &delivery),
            &opened,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    // GitHub re-delivers with the same delivery id: acknowledged, not published again.
    let (status, answer) = rt
        .post(
            ingest,
            path,
            &github_headers(examples::GITHUB_KEY, &opened, &delivery),
            &opened,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let got = outside
        .wait_for("the triage chat message", 1, FLOW_TIMEOUT, |r| {
            r.path == "/hooks/github-chat"
        })
        .await;
    assert_eq!(
        got[0].json(),
        json!({"text": "[bug] acme/app#7 \"Crash on start\" by octocat: https://github.com/acme/app/issues/7"})
    );
    // Nothing else comes: the closed issue was filtered, the re-delivery deduplicated. (The
    // support flow, running beside, takes longer than this wait.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        outside.matching(|r| r.path == "/hooks/github-chat").len(),
        1,
        "one chat message"
    );
}

async fn support(rt: &Runtime, outside: &Receiver, bootstrap: &str) {
    let (ingest, path) = ("support-intake-ingest", "/tickets");
    let ticket = |id: u32, subject: &str, message: &str, email: &str| {
        json!({"id": id, "subject": subject, "message": message, "priority": "high",
               "requester": {"email": email, "name": "Ann"}})
        .to_string()
    };
    let bad = json!({"id": 1000, "subject": "x"}).to_string();
    let billing = ticket(
        1001,
        "Refund please",
        "I want a refund for invoice 7",
        "ann@example.com",
    );
    let refused = ticket(
        1002,
        "Quote",
        "a pricing quote please",
        "reject@example.com",
    );
    let skipped = ticket(1003, "Printer", "my printer is broken", "bob@example.com");
    let no_message =
        json!({"id": 1004, "subject": "Empty", "requester": {"email": "eve@example.com"}})
            .to_string();
    for (what, key, body, want) in [
        (
            "refused at the edge: the schema wants a requester",
            examples::HELPDESK_KEY,
            &bad,
            400,
        ),
        (
            "a billing ticket: a CRM lead",
            examples::HELPDESK_KEY,
            &billing,
            202,
        ),
        // Signed with the previous key (rotation); the CRM refuses it with a 422.
        (
            "a sales ticket the CRM refuses",
            examples::HELPDESK_PREVIOUS_KEY,
            &refused,
            202,
        ),
        (
            "neither sales nor billing: the binding's `when` skips it",
            examples::HELPDESK_KEY,
            &skipped,
            202,
        ),
        (
            "no message: the pipeline's validate step dead-letters it",
            examples::HELPDESK_KEY,
            &no_message,
            202,
        ),
    ] {
        let headers = helpdesk_headers(key, body, &uuid());
        let (status, answer) = rt.post(ingest, path, &headers, body).await;
        assert_eq!(status, want, "{what}: {answer}");
    }

    let leads = outside
        .wait_for("two CRM leads", 2, FLOW_TIMEOUT, |r| {
            r.path == "/api/v2/leads"
        })
        .await;
    let lead = leads
        .iter()
        .find(|r| r.body.contains("1001"))
        .expect("the lead of ticket 1001");
    assert_eq!(lead.method, "POST");
    assert_eq!(lead.headers["authorization"], examples::CRM_TOKEN);
    assert_eq!(lead.headers["x-source"], "inputbot");
    assert_eq!(
        lead.json(),
        json!({"email": "ann@example.com", "name": "Ann", "note": "Ticket 1001: Refund please", "priority": "high"})
    );

    // The refused lead: dead-lettered with its reason, and a person told in chat.
    let notice = outside
        .wait_for("the dead-letter notice", 1, FLOW_TIMEOUT, |r| {
            r.path == "/hooks/support-chat"
        })
        .await;
    let text = notice[0].json()["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        text.starts_with("Ticket 1002 could not be sent to the CRM after 1 attempts: "),
        "{text}"
    );
    let topic = rt.config("crm-lead-act").await["deadLetterTopic"]
        .as_str()
        .expect("a dead-letter topic")
        .to_owned();
    let dead = wait_records(bootstrap, &topic, 1).await.remove(0);
    assert_eq!(dead.headers["inputbot_dlq_class"], "status");
    assert_eq!(dead.headers["inputbot_dlq_status"], "422");
    let record: DeadLetter = serde_json::from_slice(&dead.value).expect("a dead-letter record");
    assert_eq!(record.event.data["ticket"], 1002);
    assert_eq!(record.event.data["from"], "reject@example.com");
    assert_eq!(record.error.status, Some(422));
    assert_eq!(record.error.attempts, 1);
    assert_eq!(record.failed_at.stage, "action");
    assert_eq!(
        wait_records(bootstrap, &topic, 1).await.len(),
        1,
        "only the refused lead is dead-lettered"
    );
    assert_eq!(
        outside.matching(|r| r.path == "/api/v2/leads").len(),
        2,
        "ticket 1003 is skipped"
    );

    // The ticket without a message: on the pipeline's dead-letter topic, naming the step.
    let topic = rt.config("ticket-triage-process").await["deadLetterTopic"]
        .as_str()
        .expect("the pipeline's dead-letter topic")
        .to_owned();
    let dead = wait_records(bootstrap, &topic, 1).await;
    assert_eq!(
        dead.len(),
        1,
        "only the ticket without a message fails a step"
    );
    let record: DeadLetter = serde_json::from_slice(&dead[0].value).expect("a dead-letter record");
    assert_eq!(record.event.data["id"], 1004);
    assert_eq!(
        (
            record.failed_at.stage.as_str(),
            record.failed_at.name.as_str()
        ),
        ("step", "require-message")
    );
    assert_eq!(record.error.class, "validation");
}

async fn status_page(outside: &Receiver, mail: &MailSink) {
    let got = outside
        .wait_for("the incident chat message", 1, FLOW_TIMEOUT, |r| {
            r.path == "/hooks/ops-chat"
        })
        .await;
    assert_eq!(
        got[0].json(),
        json!({"text": ":rotating_light: API outage (major, investigating) https://stspg.io/inc-1"})
    );
    let polls = outside.matching(|r| r.path == "/api/v2/incidents/unresolved.json");
    assert_eq!(polls[0].headers["authorization"], examples::STATUS_TOKEN);
    assert_eq!(polls[0].headers["accept"], "application/json");
    // A major incident pages: one mail, through the relay, as the example's user.
    let mails = mail.wait_for(1, FLOW_TIMEOUT).await;
    let m = &mails[0];
    assert_eq!(
        m.auth,
        Some(("statusbot".to_owned(), "flow-smtp-password".to_owned()))
    );
    assert_eq!(m.from, "<statusbot@example.com>");
    assert_eq!(m.to, ["<oncall@example.com>"]);
    assert!(
        m.data.contains("Subject: [major] API outage\r\n"),
        "{}",
        m.data
    );
    assert!(m.data.contains("Vendor incident: API outage"), "{}", m.data);
    assert!(
        m.data.contains("Details: https://stspg.io/inc-1"),
        "{}",
        m.data
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(mail.mails().len(), 1, "the resolved incident sends nothing");
    assert_eq!(
        outside.matching(|r| r.path == "/hooks/ops-chat").len(),
        1,
        "one chat message"
    );
}
