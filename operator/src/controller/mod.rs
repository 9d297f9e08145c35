//! The three controllers and the machinery they share. Each reconcile reads as the pipeline
//! it is:
//!
//! ```text
//!  fetch references (the only reads) ─▶ plan (pure: validate, resolve, render)
//!    ─▶ topics (ensure; cached while ready) ─▶ apply children (server-side, in CHILD_KINDS
//!       order, skipped when the live object already matches) ─▶ prune (once per spec
//!       change) ─▶ status (patched only when it changed) + Events on transitions
//! ```
//!
//! Permanent failures (invalid spec, missing reference) end in conditions and a Warning Event
//! and wait for a change — the watches on references bring the resource back; transient ones
//! return an error and requeue with backoff ([`error_policy`]).

pub mod binding;
pub mod bot;
pub mod pipeline;
pub mod run;

use std::{fmt::Debug, sync::Arc, time::Duration};

use inputbot_api::common::{CommonStatus, DeletionPolicy};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        controller::Action,
        events::{Event, EventType},
        reflector::ObjectRef,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tracing::{info, warn};

pub use run::{controllers, metadata_stores};

use crate::{
    context::{Context, TOPIC_RECHECK},
    error::{Error, Result},
    render::{
        self, AutoscalingState, CHILD_KINDS, Child, ChildKind, FIELD_MANAGER, HASH_ANNOTATION, Plan,
    },
    topics::TopicOwner,
};

/// Finalizer that deletes a resource's topics (only with `deletionPolicy: Delete`).
pub const FINALIZER: &str = "inputbot.dev/topics";
/// Periodic re-check of a healthy resource (reads only, unless something drifted).
pub const RESYNC: Duration = Duration::from_secs(600);
/// Re-check while something is still coming up (topics not ready yet).
pub const PENDING: Duration = Duration::from_secs(5);

/// What a controller needs to know of its resource kind.
#[async_trait::async_trait]
pub trait Reconciled:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// `InputBot`, `Pipeline` or `ActionBinding`.
    const KIND: &'static str;
    /// What happens to the topics on delete.
    fn deletion_policy(&self) -> DeletionPolicy;
    /// The conditions in the current status.
    fn current_status(&self) -> Option<Value>;
    /// Fetch references (the only reads) and plan (pure).
    async fn plan(&self, ctx: &Context) -> Result<Plan>;
    /// The kind-specific part of the status (endpoints, topics) from a plan.
    fn status_fields(&self, plan: Option<&Plan>) -> Value;
}

fn ns<K: Resource>(obj: &K) -> String {
    obj.namespace().unwrap_or_else(|| "default".into())
}

fn topic_owner<K: Reconciled>(obj: &K) -> TopicOwner {
    TopicOwner {
        api_version: format!("{}/{}", inputbot_api::GROUP, inputbot_api::VERSION),
        kind: K::KIND.into(),
        namespace: ns(obj),
        name: obj.name_any(),
        uid: obj.uid().unwrap_or_default(),
    }
}

/// The reconcile of every kind.
pub async fn reconcile<K: Reconciled>(
    guard: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let labels = crate::metrics::KindLabels {
        kind: K::KIND.into(),
    };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let gauge = ctx.metrics.in_flight.get_or_create(&labels).clone();
    gauge.inc();
    let started = std::time::Instant::now();
    let result = match &guard.0 {
        Ok(obj) => reconcile_object(obj, &ctx).await,
        Err(invalid) => {
            // One malformed object must not stop the others: report it and wait for a fix.
            warn!(
                kind = K::KIND,
                name = invalid.metadata.name.as_deref().unwrap_or(""),
                namespace = invalid.metadata.namespace.as_deref().unwrap_or(""),
                error = %invalid.error,
                "cannot read the object; waiting for it to change"
            );
            Err(Error::Malformed(invalid.error.clone()))
        }
    };
    gauge.dec();
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Requeues transient failures with backoff; permanent ones wait for a change.
pub fn error_policy<K: Reconciled>(
    guard: Arc<DeserializeGuard<K>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .failures
        .get_or_create(&crate::metrics::ErrorLabels {
            kind: K::KIND.into(),
            error: error.label().into(),
        })
        .inc();
    let (name, uid) = match &guard.0 {
        Ok(o) => (
            format!("{}/{}", ns(o), o.name_any()),
            o.uid().unwrap_or_default(),
        ),
        Err(i) => (
            i.metadata.name.clone().unwrap_or_default(),
            i.metadata.uid.clone().unwrap_or_default(),
        ),
    };
    if error.is_permanent() {
        warn!(kind = K::KIND, %name, error = %error, reason = error.label(), "reconcile failed; waiting for a change");
        Action::await_change()
    } else {
        let delay = ctx.backoff(&uid);
        warn!(kind = K::KIND, %name, error = %error, reason = error.label(), retry_in = ?delay, "reconcile failed; retrying");
        Action::requeue(delay)
    }
}

async fn reconcile_object<K: Reconciled>(obj: &K, ctx: &Context) -> Result<Action> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns(obj));
    let name = obj.name_any();
    let uid = obj.uid().unwrap_or_default();
    let delete = obj.deletion_policy() == DeletionPolicy::Delete;
    let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);

    // Deletion: children go with the owner (owner references); topics only on Delete.
    if obj.meta().deletion_timestamp.is_some() {
        if has_finalizer {
            if let Ok(plan) = obj.plan(ctx).await {
                let names: Vec<String> = plan.topics.iter().map(|t| t.name.clone()).collect();
                ctx.topics
                    .delete(&topic_owner(obj), &names)
                    .await
                    .map_err(Error::Topics)?;
                info!(kind = K::KIND, %name, topics = ?names, "deleted topics (deletionPolicy: Delete)");
            } else {
                // Without a valid plan the names are still derivable: the topic names
                // depend only on namespace and names.
                let names = derived_topics::<K>(obj);
                ctx.topics
                    .delete(&topic_owner(obj), &names)
                    .await
                    .map_err(Error::Topics)?;
            }
            remove_finalizer(&api, obj, ctx).await?;
        }
        return Ok(Action::await_change());
    }
    if delete != has_finalizer {
        if delete {
            add_finalizer(&api, obj, ctx).await?;
        } else {
            remove_finalizer(&api, obj, ctx).await?;
        }
    }

    let generation = obj.meta().generation.unwrap_or(0);
    let plan = match obj.plan(ctx).await {
        Ok(plan) => plan,
        Err(e) if e.is_permanent() => {
            let (refs_ok, refs_reason) = match &e {
                Error::MissingReference { .. } => (false, "ReferenceNotFound"),
                _ => (true, "Resolved"),
            };
            let message = e.to_string();
            let conditions = vec![
                cond("Ready", false, e.label(), &message, generation),
                cond(
                    "ReferencesResolved",
                    refs_ok,
                    refs_reason,
                    if refs_ok {
                        "every reference exists"
                    } else {
                        &message
                    },
                    generation,
                ),
            ];
            write_status(&api, obj, ctx, conditions, obj.status_fields(None)).await?;
            ctx.succeeded(&uid);
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };

    // Topics and workloads at once: the runtime reports not-ready (and ingest answers 503)
    // while a topic is missing, so nothing waits for the broker but Ready itself.
    let (topics, applied) =
        tokio::join!(ensure_topics(obj, ctx, &plan), apply_children(ctx, &plan));
    // Prune every reconcile: it reads the stores only, and a child created by an earlier
    // spec that shows up late wakes this owner again.
    let children = match applied {
        Ok(()) => prune(ctx, &plan).await,
        Err(e) => Err(e),
    };
    let (topics_ok, topics_message) = match (children, topics) {
        (Err(e), _) | (Ok(()), Err(e)) => {
            // Transient (retried with backoff), but a person may have to act (RBAC, a broker
            // that refuses): say so in the status and a Warning, not only in the log.
            let conditions = vec![
                cond("Ready", false, e.label(), &e.to_string(), generation),
                cond(
                    "ReferencesResolved",
                    true,
                    "Resolved",
                    "every reference exists",
                    generation,
                ),
            ];
            if let Err(w) =
                write_status(&api, obj, ctx, conditions, obj.status_fields(Some(&plan))).await
            {
                warn!(kind = K::KIND, %name, error = %w, "cannot report a failure in the status");
            }
            return Err(e);
        }
        (Ok(()), Ok(topics)) => topics,
    };
    let key = (uid.clone(), generation);
    if !ctx.warned.lock().expect("lock").contains(&key) {
        ctx.warned.lock().expect("lock").insert(key);
        // Once per spec generation: a steady state publishes nothing.
        for w in &plan.warnings {
            publish(
                ctx,
                obj,
                EventType::Warning,
                "ReplicasCapped",
                "Reconcile",
                w,
            )
            .await;
        }
    }

    let (workload_ok, workload_message) = workload_ready(ctx, &plan).await;
    let ready = topics_ok && workload_ok;
    let (ready_reason, ready_message) = if !topics_ok {
        ("TopicsNotReady", topics_message.clone())
    } else if !workload_ok {
        ("WorkloadNotReady", workload_message.clone())
    } else {
        ("Ready", format!("{} is running", K::KIND))
    };
    let mut conditions = vec![
        cond("Ready", ready, ready_reason, &ready_message, generation),
        cond(
            "ReferencesResolved",
            true,
            "Resolved",
            "every reference exists",
            generation,
        ),
        cond(
            "TopicsReady",
            topics_ok,
            if topics_ok {
                "TopicsReady"
            } else {
                "TopicsNotReady"
            },
            &topics_message,
            generation,
        ),
        cond(
            "WorkloadReady",
            workload_ok,
            if workload_ok {
                "DeploymentsAvailable"
            } else {
                "DeploymentsNotAvailable"
            },
            &workload_message,
            generation,
        ),
    ];
    match plan.autoscaling {
        AutoscalingState::Off => {}
        AutoscalingState::Rendered => conditions.push(cond(
            "AutoscalingReady",
            true,
            "AutoscalerCreated",
            "the autoscaler exists",
            generation,
        )),
        AutoscalingState::KedaMissing => conditions.push(cond(
            "AutoscalingReady",
            false,
            "KEDANotInstalled",
            "autoscaling.lag needs KEDA (ScaledObject CRD keda.sh/v1alpha1), which is not installed; running minReplicas without autoscaling",
            generation,
        )),
    }
    write_status(&api, obj, ctx, conditions, obj.status_fields(Some(&plan))).await?;
    ctx.succeeded(&uid);
    Ok(if topics_ok {
        Action::requeue(RESYNC)
    } else {
        Action::requeue(PENDING)
    })
}

fn derived_topics<K: Reconciled>(obj: &K) -> Vec<String> {
    let (n, name) = (ns(obj), obj.name_any());
    match K::KIND {
        // The state topic exists only with poll or schedule sources; deleting a missing
        // topic is a no-op for both provisioners.
        "InputBot" => vec![
            inputbot_api::names::raw_topic(&n, &name),
            inputbot_api::names::dedupe_topic(&n, &name),
            inputbot_api::names::state_topic(&n, &name),
        ],
        "Pipeline" => vec![
            inputbot_api::names::out_topic(&n, &name),
            inputbot_api::names::pipeline_dlq_topic(&n, &name),
        ],
        _ => vec![inputbot_api::names::binding_dlq_topic(&n, &name)],
    }
}

async fn add_finalizer<K: Reconciled>(api: &Api<K>, obj: &K, ctx: &Context) -> Result<()> {
    let mut finalizers = obj.finalizers().to_vec();
    finalizers.push(FINALIZER.into());
    patch_finalizers(api, obj, ctx, finalizers).await
}

async fn remove_finalizer<K: Reconciled>(api: &Api<K>, obj: &K, ctx: &Context) -> Result<()> {
    let finalizers: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(api, obj, ctx, finalizers).await
}

async fn patch_finalizers<K: Reconciled>(
    api: &Api<K>,
    obj: &K,
    ctx: &Context,
    finalizers: Vec<String>,
) -> Result<()> {
    // The resourceVersion makes the merge patch conditional: a finalizer someone else added
    // in between is never dropped (the conflict requeues).
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": obj.resource_version(),
    }});
    ctx.metrics.wrote("finalizer");
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::kube(format!(
        "update finalizers of {} {}",
        K::KIND,
        obj.name_any()
    )))?;
    Ok(())
}

async fn ensure_topics<K: Reconciled>(
    obj: &K,
    ctx: &Context,
    plan: &Plan,
) -> Result<(bool, String)> {
    let uid = obj.uid().unwrap_or_default();
    let names: Vec<&str> = plan.topics.iter().map(|t| t.name.as_str()).collect();
    let hash = render::digest(&json!(format!("{:?}", plan.topics)));
    let cached = ctx.topics_ready.lock().expect("lock").get(&uid).cloned();
    // The cached answer carries the message of the check it remembers: a status that says
    // the same thing in other words would be written again on every reconcile.
    if let Some((h, at, message)) = cached
        && h == hash
        && at.elapsed() < TOPIC_RECHECK
    {
        return Ok((true, message));
    }
    if plan.topics.is_empty() {
        return Ok((true, "no topics of its own".into()));
    }
    let outcomes = ctx
        .topics
        .ensure(&topic_owner(obj), &plan.topics)
        .await
        .map_err(Error::Topics)?;
    let ready = outcomes.iter().all(|o| o.ready);
    let notes: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.message.as_ref().map(|m| format!("{}: {m}", o.name)))
        .collect();
    let mut message = if ready {
        format!(
            "topics {} exist ({} mode)",
            names.join(", "),
            ctx.topics.mode()
        )
    } else {
        format!("waiting for topics ({} mode)", ctx.topics.mode())
    };
    if !notes.is_empty() {
        message.push_str("; ");
        message.push_str(&notes.join("; "));
    }
    if ready {
        ctx.topics_ready
            .lock()
            .expect("lock")
            .insert(uid, (hash, std::time::Instant::now(), message.clone()));
    }
    Ok((ready, message))
}

/// The live revision of a child: for a Deployment its spec (with or without the replica
/// count, as `manages_replicas` says; see [`run::deployment_revisions`]), for other kinds
/// with a generation that, else the resourceVersion.
fn revision(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    manages_replicas: bool,
) -> String {
    if let Some((with, without)) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(run::SPEC_REVISIONS))
        .and_then(|r| r.split_once(':'))
    {
        return format!("s{}", if manages_replicas { with } else { without });
    }
    match meta.generation {
        Some(g) if g > 0 => format!("g{g}"),
        _ => format!("r{}", meta.resource_version.clone().unwrap_or_default()),
    }
}

async fn apply_children(ctx: &Context, plan: &Plan) -> Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for child in &plan.children {
        let kind = child.kind();
        let ar = kind.api_resource();
        let name = child.name();
        let key = (kind, plan.owner.namespace.clone(), name.clone());
        let (json, hash) = child.clone().with_hash();
        // Deployments under an autoscaler are rendered without `replicas`.
        let manages_replicas = json.pointer("/spec/replicas").is_some();
        if let Some(live) = ctx.child_meta(kind, &plan.owner.namespace, &name).await {
            let live_hash = live
                .annotations
                .as_ref()
                .and_then(|a| a.get(HASH_ANNOTATION));
            let applied = ctx.applied.lock().expect("lock").get(&key).cloned();
            if live_hash == Some(&hash)
                && applied.as_ref() == Some(&(hash.clone(), revision(&live, manages_replicas)))
            {
                ctx.metrics.skipped(&ar.kind);
                continue;
            }
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &plan.owner.namespace, &ar);
        ctx.metrics.wrote(&ar.kind);
        let written = api
            .patch(&name, &params, &Patch::Apply(&json))
            .await
            .map_err(Error::kube(format!(
                "apply {} {}/{}",
                ar.kind, plan.owner.namespace, name
            )))?;
        if kind == ChildKind::Deployment
            && let Some(g) = written.metadata.generation
        {
            ctx.rollouts.lock().expect("lock").insert(key.clone(), g);
        }
        ctx.applied.lock().expect("lock").insert(
            key,
            (hash, written_revision(kind, written, manages_replicas)),
        );
    }
    Ok(())
}

/// The revision of what the API server answered an apply with, computed as [`revision`]
/// computes it for the watch's copy.
fn written_revision(kind: ChildKind, mut written: DynamicObject, manages_replicas: bool) -> String {
    let revisions = match kind {
        ChildKind::Deployment => serde_json::to_value(&written)
            .and_then(serde_json::from_value)
            .ok()
            .map(|d| run::deployment_revisions(&d)),
        k if run::has_status_without_generation(k) => {
            let h = run::spec_revision(&written.data);
            Some(format!("{h}:{h}"))
        }
        _ => None,
    };
    if let Some(r) = revisions {
        written
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(run::SPEC_REVISIONS.into(), r);
    }
    revision(&written.metadata, manages_replicas)
}

/// Deletes children of this owner that the plan no longer has (autoscaling removed → HPA
/// gone; exposure removed → Ingress gone).
async fn prune(ctx: &Context, plan: &Plan) -> Result<()> {
    // From the watches' stores: a child that appears there later wakes its owner, which
    // prunes again, so nothing here needs to list.
    for kind in CHILD_KINDS.iter().copied().filter(|k| ctx.watches(*k)) {
        let ar = kind.api_resource();
        let keep: Vec<String> = plan
            .children
            .iter()
            .filter(|c| c.kind() == kind)
            .map(Child::name)
            .collect();
        let stale: Vec<String> = ctx
            .children_of(kind, &plan.owner.namespace, &plan.owner.uid)
            .await
            .into_iter()
            .filter(|name| !keep.contains(name))
            .collect();
        if stale.is_empty() {
            continue;
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &plan.owner.namespace, &ar);
        for name in stale {
            ctx.metrics.wrote(&format!("{}-delete", ar.kind));
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {
                    info!(kind = %ar.kind, namespace = %plan.owner.namespace, %name, "pruned a child the spec no longer asks for")
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(Error::kube(format!("prune {} {name}", ar.kind))(e)),
            }
            ctx.applied
                .lock()
                .expect("lock")
                .remove(&(kind, plan.owner.namespace.clone(), name));
        }
    }
    Ok(())
}

/// Whether every Deployment of the plan runs its current generation with enough replicas
/// available ([`Plan::min_available`]).
async fn workload_ready(ctx: &Context, plan: &Plan) -> (bool, String) {
    let _ = ctx.deployments.wait_until_ready().await;
    let mut waiting = Vec::new();
    for name in &plan.deployments {
        let d = match ctx
            .deployments
            .get(&ObjectRef::new(name).within(&plan.owner.namespace))
        {
            Some(d) => d,
            None => {
                waiting.push(format!("{name}: not created yet"));
                continue;
            }
        };
        let status = d.status.clone().unwrap_or_default();
        // The generation this operator wrote: a later one is an autoscaler's replica count,
        // which the counts below already judge.
        let generation = ctx
            .rollouts
            .lock()
            .expect("lock")
            .get(&(
                ChildKind::Deployment,
                plan.owner.namespace.clone(),
                name.clone(),
            ))
            .copied()
            .unwrap_or(0);
        let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let floor = plan.min_available.get(name).copied().unwrap_or(wanted);
        let (updated, available) = (
            status.updated_replicas.unwrap_or(0),
            status.available_replicas.unwrap_or(0),
        );
        // The controller saw the current spec, every pod runs the current template, and
        // enough of them are available. Not the Available condition: with maxUnavailable 0
        // it turns False whenever an autoscaler adds a pod.
        if status.observed_generation.unwrap_or(0) < generation {
            waiting.push(format!(
                "{name}: rollout of generation {generation} not observed yet"
            ));
        } else if updated < wanted || available < floor {
            waiting.push(format!(
                "{name}: {}/{wanted} replicas updated and available, {floor} needed",
                available.min(updated)
            ));
        }
    }
    if waiting.is_empty() {
        (
            true,
            format!("Deployments {} are available", plan.deployments.join(", ")),
        )
    } else {
        (false, format!("waiting for {}", waiting.join("; ")))
    }
}

fn cond(type_: &str, ok: bool, reason: &str, message: &str, generation: i64) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.chars().take(1024).collect(),
        observed_generation: Some(generation),
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Patches the status when it differs from the current one, keeping each condition's
/// `lastTransitionTime` while its status stays; publishes an Event when Ready changes.
async fn write_status<K: Reconciled>(
    api: &Api<K>,
    obj: &K,
    ctx: &Context,
    mut conditions: Vec<Condition>,
    fields: Value,
) -> Result<()> {
    let current = obj.current_status().unwrap_or(Value::Null);
    let old: CommonStatus = serde_json::from_value(current.clone()).unwrap_or_default();
    for c in &mut conditions {
        if let Some(prev) = old.conditions.iter().find(|p| p.type_ == c.type_)
            && prev.status == c.status
        {
            c.last_transition_time = prev.last_transition_time.clone();
        }
    }
    let generation = obj.meta().generation;
    let mut status = json!({
        "observedGeneration": generation,
        "conditions": conditions,
    });
    if let (Value::Object(s), Value::Object(f)) = (&mut status, fields) {
        s.extend(f);
    }
    if current == status {
        ctx.metrics.skipped("status");
        return Ok(());
    }
    let was = old.conditions.iter().find(|c| c.type_ == "Ready");
    let now = conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready is always set");
    if was.map(|w| (&w.status, &w.reason)) != Some((&now.status, &now.reason)) {
        // Coming up is normal; a failure a person must act on is a Warning.
        let progressing = matches!(now.reason.as_str(), "WorkloadNotReady" | "TopicsNotReady");
        let kind = if now.status == "True" || progressing {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(ctx, obj, kind, &now.reason, "Reconcile", &now.message).await;
    }
    ctx.metrics.wrote("status");
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(json!({
            "apiVersion": K::api_version(&()),
            "kind": K::KIND,
            "status": status,
        })),
    )
    .await
    .map_err(Error::kube(format!(
        "patch status of {} {}",
        K::KIND,
        obj.name_any()
    )))?;
    Ok(())
}

async fn publish<K: Reconciled>(
    ctx: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let reference = obj.object_ref(&());
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1024).collect()),
        action: action.into(),
        secondary: None,
    };
    // Events are best effort: a failure to publish one never fails the reconcile.
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        warn!(error = %e, "cannot publish an Event");
    }
}

/// The `topics` status of a Pipeline or ActionBinding.
fn topics_status(plan: Option<&Plan>) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(plan) = plan {
        let mut t = serde_json::Map::new();
        for (key, value) in [
            ("input", &plan.input_topic),
            ("output", &plan.output_topic),
            ("deadLetter", &plan.dead_letter_topic),
        ] {
            if let Some(v) = value {
                t.insert(key.into(), v.clone().into());
            }
        }
        out.insert("topics".into(), Value::Object(t));
    }
    Value::Object(out)
}
