//! The operator of the flow: the chart's Deployment as a local process (kwok) or as the
//! cluster's own pods, and what the test reads of its Deployment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use inputbot_e2e::pod::{LocalProcess, current_pod, plan};
use inputbot_e2e::{Cluster, wait_for};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::{FULLNAME, real_pods};

/// The operator: a local process as the chart's pod (kwok), or the chart's own pods.
pub enum Operator {
    Local(Box<LocalProcess>),
    Pods,
}

impl Operator {
    pub async fn up(cluster: &Cluster, ns: &str, root: &Path, kubeconfig: &str) -> Operator {
        if !real_pods() {
            return Operator::Local(Box::new(
                start_operator(cluster, ns, root, kubeconfig).await,
            ));
        }
        let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
        wait_for(
            "the operator Deployment available",
            Duration::from_secs(180),
            || async {
                let d = deployments.get(FULLNAME).await.ok()?;
                let s = d.status?;
                (s.available_replicas.unwrap_or(0) >= 1
                    && s.observed_generation >= d.metadata.generation)
                    .then_some(())
            },
        )
        .await;
        Operator::Pods
    }

    /// The pod gone: SIGTERM to the local process, which must exit 0.
    pub async fn stop(self) {
        if let Operator::Local(mut p) = self {
            assert!(
                p.terminate(Duration::from_secs(30)).await,
                "the operator exits 0 on SIGTERM"
            );
        }
    }

    /// The Lease holders that count as this operator: the local process's pod, or any pod of
    /// the Deployment's current ReplicaSet.
    pub async fn identities(&self, client: &Client, d: &Deployment) -> BTreeSet<String> {
        match self {
            Operator::Local(p) => BTreeSet::from([p.plan.pod.clone()]),
            Operator::Pods => {
                let hash = pod_template_hash(client, d).await;
                Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
                    client.clone(),
                    &d.namespace().unwrap(),
                )
                .list(&ListParams::default().labels(&format!("pod-template-hash={hash}")))
                .await
                .unwrap()
                .items
                .iter()
                .map(|p| p.name_any())
                .collect()
            }
        }
    }
}

/// The Deployment's env, literal values only, by name.
pub fn literal_env(d: &Deployment) -> BTreeMap<String, Option<String>> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| &p.containers[0])
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect()
}

/// The local process of the operator's Deployment as it stands now, as `sa`.
async fn start_operator(
    cluster: &Cluster,
    ns: &str,
    root: &Path,
    kubeconfig: &str,
) -> LocalProcess {
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let d = deployments
        .get(FULLNAME)
        .await
        .expect("the chart's operator Deployment");
    let pod = current_pod(&cluster.client, &d, Duration::from_secs(60))
        .await
        .expect("an operator pod");
    let plan = plan(&cluster.client, &d, &pod, root)
        .await
        .expect("the operator's plan");
    // Exactly the stated rewrites; every other arg and env var verbatim.
    assert_eq!(
        plan.rewritten(),
        ["/tmp", "0.0.0.0:8080"],
        "{:#?}",
        plan.rewrites
    );
    assert_eq!(plan.args, ["run"]);
    let container_env: BTreeSet<String> = literal_env(&d).into_keys().collect();
    let mut planned: BTreeSet<String> = plan.env.keys().cloned().collect();
    assert!(planned.remove("TMPDIR"));
    assert_eq!(planned, container_env);
    for (name, value) in literal_env(&d) {
        if let Some(v) = value
            && name != "INPUTBOT_METRICS_LISTEN"
        {
            assert_eq!(plan.env[&name], v, "env {name} is verbatim");
        }
    }
    assert_eq!(plan.env["POD_NAME"], pod.name_any());
    assert_eq!(plan.env["INPUTBOT_LEASE_NAMESPACE"], ns);
    let mut op = LocalProcess::spawn(plan, &[("KUBECONFIG", kubeconfig)]);
    op.wait_ready(Duration::from_secs(30)).await;
    op
}

/// The `pod-template-hash` of the Deployment's current ReplicaSet.
pub async fn pod_template_hash(client: &Client, d: &Deployment) -> String {
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &d.namespace().unwrap());
    let revision = d
        .annotations()
        .get("deployment.kubernetes.io/revision")
        .cloned();
    let rs = sets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|rs| {
            rs.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == d.metadata.uid.as_ref())
                && rs.annotations().get("deployment.kubernetes.io/revision") == revision.as_ref()
        })
        .expect("the current ReplicaSet");
    rs.labels()["pod-template-hash"].clone()
}
