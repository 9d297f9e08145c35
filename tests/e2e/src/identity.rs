//! Acting as a ServiceAccount without its token: a kubeconfig that is the test's admin
//! kubeconfig plus `as: system:serviceaccount:<ns>:<name>` (impersonation), so that every
//! request the program makes is authorised as that ServiceAccount — the API server adds the
//! ServiceAccount's groups itself, as it would for its token — and RBAC is what decides. And
//! the questions a reviewer asks of an identity: may it do this (SubjectAccessReview)?

use std::path::Path;

use anyhow::Context as _;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_yaml::Value;

use crate::setting;

/// The user name of a ServiceAccount.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Writes to `out` the admin kubeconfig of the cluster under test (`KUBECONFIG`) with only
/// its current context kept and `as: <user>` added to that context's user.
pub fn write_impersonating_kubeconfig(user: &str, out: &Path) -> anyhow::Result<()> {
    let path = setting("KUBECONFIG").context("KUBECONFIG of the cluster under test")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut config: Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {path}"))?;
    let current = config["current-context"]
        .as_str()
        .with_context(|| format!("{path} has no current-context"))?
        .to_owned();
    let context = config["contexts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|c| c["name"].as_str() == Some(&current))
        .with_context(|| format!("{path}: no context {current}"))?
        .clone();
    let user_name = context["context"]["user"]
        .as_str()
        .with_context(|| format!("{path}: context {current} names no user"))?
        .to_owned();
    let cluster_name = context["context"]["cluster"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut user_entry = config["users"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|u| u["name"].as_str() == Some(&user_name))
        .with_context(|| format!("{path}: no user {user_name}"))?
        .clone();
    user_entry["user"]["as"] = Value::String(user.to_owned());
    let cluster = config["clusters"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|c| c["name"].as_str() == Some(&cluster_name))
        .with_context(|| format!("{path}: no cluster {cluster_name}"))?
        .clone();
    let mut context = context;
    if let Some(ctx) = context["context"].as_mapping_mut() {
        ctx.remove("namespace");
    }
    config["contexts"] = Value::Sequence(vec![context]);
    config["users"] = Value::Sequence(vec![user_entry]);
    config["clusters"] = Value::Sequence(vec![cluster]);
    std::fs::write(out, serde_yaml::to_string(&config)?)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// A question for [`may`]: verb, `group/resource[/subresource]` (`core` for the core group),
/// and a namespace (empty: all namespaces, or a cluster-scoped resource).
pub type Question<'a> = (&'a str, &'a str, &'a str);

/// Whether the ServiceAccount `namespace/name` may do what `question` asks (a
/// SubjectAccessReview made by the test's admin, with the groups its token would carry).
pub async fn may(client: &Client, namespace: &str, name: &str, question: Question<'_>) -> bool {
    let (verb, resource, ns) = question;
    let mut parts = resource.split('/');
    let group = parts.next().unwrap_or_default();
    let res = parts.next().unwrap_or_default();
    let sub = parts.next();
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(service_account_user(namespace, name)),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                group: Some(if group == "core" { "" } else { group }.to_owned()),
                resource: Some(res.to_owned()),
                subresource: sub.map(str::to_owned),
                verb: Some(verb.to_owned()),
                namespace: (!ns.is_empty()).then(|| ns.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("a SubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}
