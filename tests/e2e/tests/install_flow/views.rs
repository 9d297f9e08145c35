//! What a user (or kubectl) sees of the release: the CRDs the chart owns, and the Table of
//! `kubectl get`, through the API or the real kubectl.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use inputbot_e2e::{setting, wait_for};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::{CRDS, READY_TIMEOUT, RELEASE};

/// CRDs a previous run (or another suite) left behind are adopted by this release the way
/// Helm documents it (its ownership label and annotations), so the chart installs them.
pub async fn adopt_existing_crds(client: &Client, namespace: &str) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        if crds.get_opt(name).await.expect("reading a CRD").is_some() {
            let patch = json!({"metadata": {
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {
                    "meta.helm.sh/release-name": RELEASE,
                    "meta.helm.sh/release-namespace": namespace,
                }
            }});
            crds.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("adopting a CRD");
        }
    }
}

pub async fn wait_crds_served(client: &Client) {
    for name in CRDS {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        wait_for(
            &format!("CRD {name} Established"),
            Duration::from_secs(30),
            || async {
                let crd = crds.get_opt(name).await.ok().flatten()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            },
        )
        .await;
    }
    let gvk = kube::core::GroupVersionKind::gvk("inputbot.dev", "v1alpha1", "ActionBinding");
    wait_for(
        "the inputbot.dev kinds to be served",
        Duration::from_secs(30),
        || async {
            kube::discovery::pinned_kind(client, &gvk)
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
}

/// The Table `kubectl get <plural>` prints: each row's cells by column name.
pub async fn table(client: &Client, ns: &str, plural: &str) -> Vec<BTreeMap<String, String>> {
    let req = http::Request::get(format!(
        "/apis/inputbot.dev/v1alpha1/namespaces/{ns}/{plural}"
    ))
    .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Vec::new())
    .expect("a request");
    let text = client.request_text(req).await.expect("a Table");
    let t: Value = serde_json::from_str(&text).expect("Table JSON");
    let columns: Vec<String> = t["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    t["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let cells = r["cells"].as_array().cloned().unwrap_or_default();
            columns
                .iter()
                .zip(cells)
                .map(|(c, v)| {
                    (
                        c.clone(),
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .collect()
}

/// Waits until every `names` row of `kubectl get <plural>` says Ready True, reason Ready.
pub async fn wait_table_ready(
    client: &Client,
    ns: &str,
    plural: &str,
    names: &BTreeSet<String>,
) -> Vec<BTreeMap<String, String>> {
    let start = Instant::now();
    loop {
        let rows = table(client, ns, plural).await;
        let ready: BTreeSet<String> = rows
            .iter()
            .filter(|r| {
                r.get("Ready").map(String::as_str) == Some("True")
                    && r.get("Reason").map(String::as_str) == Some("Ready")
            })
            .filter_map(|r| r.get("Name").cloned())
            .collect();
        if &ready == names {
            return rows;
        }
        if start.elapsed() > READY_TIMEOUT {
            panic!(
                "timed out after {READY_TIMEOUT:?} waiting for {plural} {names:?} to be Ready in \
                 `kubectl get {plural}`; it shows:\n{rows:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The real kubectl: `INPUTBOT_KUBECTL` (scripts/tools.sh builds it), else `kubectl` on PATH.
/// Without one, the Table API above is what it would print.
pub fn kubectl() -> Option<String> {
    if let Some(k) = setting("INPUTBOT_KUBECTL") {
        return Some(k);
    }
    let found = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    found
        .is_ok_and(|o| o.status.success())
        .then(|| "kubectl".to_owned())
}

/// `kubectl get <what> -n <ns>` with the real kubectl, when there is one.
pub fn kubectl_get(what: &str, ns: &str) -> Option<String> {
    let kubeconfig = setting("KUBECONFIG")?;
    let out = std::process::Command::new(kubectl()?)
        .args(["--kubeconfig", &kubeconfig, "get", what, "-n", ns])
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "kubectl get {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}
