//! Building and running the three controllers: the watches on each kind, on the children
//! (by metadata only, into stores the no-op check and prune read; Deployments with their
//! status but without their pod template, for readiness) and across kinds (a Pipeline
//! reconciles when its InputBot changes; an ActionBinding when its Pipeline or InputBot does).
//!
//! Every reconcile reads from these stores, never from the API server, and every watch wakes
//! a reconcile only when something it acts on changed ([`changes`]): a resource's own status
//! patch, a Deployment's replica counts moving during a rollout, or a child's resourceVersion
//! bump from a status write wake nothing. At 1,000 bots that is the difference between
//! about six reconciles per resource and about two.

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use futures::{FutureExt, Stream, StreamExt, TryStreamExt, future::BoxFuture};
use inputbot_api::{ActionBinding, InputBot, Pipeline};
use k8s_openapi::{api::apps::v1::Deployment, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DynamicObject, PartialObjectMeta},
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt,
        controller::Config,
        events::Reporter,
        reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tracing::info;

use super::{Reconciled, binding, error_policy, pipeline, reconcile};
use crate::{
    context::{Context, References},
    metrics::Metrics,
    render::{ChildKind, OWNER_KIND_LABEL},
    settings::Settings,
    topics::TopicProvisioner,
};

/// What the controllers of one process share.
#[derive(Clone)]
pub struct Shared {
    /// Client.
    pub client: Client,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub settings: Settings,
    /// Topic provisioning.
    pub topics: Arc<dyn TopicProvisioner>,
    /// Reconciles at once per kind.
    pub concurrency: u16,
    /// Event reporter (controller name and pod).
    pub reporter: Reporter,
}

/// The metadata stores of one controller's children, by kind.
pub type ChildStores = HashMap<ChildKind, Store<PartialObjectMeta<DynamicObject>>>;

type ChildStream =
    futures::stream::BoxStream<'static, Result<PartialObjectMeta<DynamicObject>, watcher::Error>>;

/// How long a reconcile request must be quiet before it runs: the burst of events one
/// reconcile causes (its children created, their first status) becomes one request.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

fn child_selector(owner_kind: &str) -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={},{OWNER_KIND_LABEL}={}",
        crate::render::MANAGED_BY,
        owner_kind.to_ascii_lowercase()
    ))
}

/// Metadata watches of the children of one kind of owner, with the stores they fill.
/// Deployments are not among them: see [`deployment_store`].
pub fn metadata_stores(
    client: &Client,
    namespace: Option<&str>,
    owner_kind: &str,
    kinds: &[ChildKind],
) -> (ChildStores, Vec<(ChildKind, ChildStream)>) {
    let mut stores = HashMap::new();
    let mut streams = Vec::new();
    for kind in kinds.iter().filter(|k| **k != ChildKind::Deployment) {
        let ar = kind.api_resource();
        let writer = reflector::store::Writer::new(ar.clone());
        stores.insert(*kind, writer.as_reader());
        let events = if has_status_without_generation(*kind) {
            // Their status moves their resourceVersion, and they have no generation: watch
            // them whole, keep the metadata and a hash of the spec.
            let api: Api<DynamicObject> = match namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            watcher(api, child_selector(owner_kind))
                .map_ok(|event| match event {
                    watcher::Event::Apply(o) => watcher::Event::Apply(spec_hashed(o)),
                    watcher::Event::InitApply(o) => watcher::Event::InitApply(spec_hashed(o)),
                    watcher::Event::Delete(o) => watcher::Event::Delete(spec_hashed(o)),
                    watcher::Event::Init => watcher::Event::Init,
                    watcher::Event::InitDone => watcher::Event::InitDone,
                })
                .default_backoff()
                .boxed()
        } else {
            // An Api of PartialObjectMeta makes metadata-only requests.
            let api: Api<PartialObjectMeta<DynamicObject>> = match namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            watcher(api, child_selector(owner_kind))
                .modify(|m| {
                    m.types = None;
                    lean(&mut m.metadata);
                })
                .default_backoff()
                .boxed()
        };
        let stream = changes(
            reflector(writer, events),
            |m: &PartialObjectMeta<DynamicObject>| child_key(&m.metadata),
        )
        .boxed();
        streams.push((*kind, stream));
    }
    (stores, streams)
}

/// Kinds whose status changes their resourceVersion while they have no generation to tell a
/// spec edit from a status update (a ClusterIP Service's status never moves, but a
/// LoadBalancer's does).
pub fn has_status_without_generation(kind: ChildKind) -> bool {
    matches!(
        kind,
        ChildKind::HorizontalPodAutoscaler | ChildKind::Service
    )
}

/// The metadata of `o` with [`SPEC_REVISIONS`] set from its spec.
fn spec_hashed(o: DynamicObject) -> PartialObjectMeta<DynamicObject> {
    let mut metadata = o.metadata;
    let h = spec_revision(&o.data);
    metadata
        .annotations
        .get_or_insert_default()
        .insert(SPEC_REVISIONS.into(), format!("{h}:{h}"));
    lean(&mut metadata);
    PartialObjectMeta {
        types: None,
        metadata,
        _phantom: Default::default(),
    }
}

/// A hash of the `spec` in an object's JSON.
pub fn spec_revision(data: &serde_json::Value) -> String {
    format!(
        "{:x}",
        hash_of(serde_json::to_string(&data["spec"]).unwrap_or_default())
    )
}

/// The Deployments of one kind of owner, without their pod templates (the operator renders
/// those; what it reads back is metadata and status), and the stream of their changes that
/// matter: spec, labels, annotations, and readiness, not every replica count of a rollout.
pub fn deployment_store(
    client: &Client,
    namespace: Option<&str>,
    owner_kind: &str,
) -> (
    Store<Deployment>,
    futures::stream::BoxStream<'static, Result<Deployment, watcher::Error>>,
) {
    let api: Api<Deployment> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let stream = changes(
        reflector(
            writer,
            watcher(api, child_selector(owner_kind))
                .modify(|d: &mut Deployment| {
                    // Before the spec goes: what the skip check compares (see
                    // `deployment_revisions`), kept on the stored copy only.
                    let revisions = deployment_revisions(d);
                    d.metadata
                        .annotations
                        .get_or_insert_default()
                        .insert(SPEC_REVISIONS.into(), revisions);
                    lean(&mut d.metadata);
                    // Of the spec and status, readiness reads the replica counts only.
                    d.spec = d
                        .spec
                        .take()
                        .map(|s| k8s_openapi::api::apps::v1::DeploymentSpec {
                            replicas: s.replicas,
                            ..Default::default()
                        });
                    if let Some(status) = d.status.as_mut() {
                        status.conditions = None;
                    }
                })
                .default_backoff(),
        ),
        deployment_key,
    )
    .boxed();
    (reader, stream)
}

/// An annotation on the operator's in-memory copies of children (never written): a hash of
/// the labels and annotations [`lean`] drops, so an edit to them still wakes the owner.
pub const OBSERVED_METADATA: &str = "inputbot.dev/observed-metadata";

/// Keeps of a child's metadata only what a reconcile reads — name, namespace, uid,
/// resourceVersion, generation, deletion, the controller's owner reference and the two
/// annotations the skip check compares — and folds the rest into [`OBSERVED_METADATA`].
/// At 1,000 bots the stores hold about 10,000 children; labels, other annotations and
/// managedFields were most of their size.
fn lean(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    let observed = hash_of((&meta.labels, &meta.annotations));
    let mut kept: std::collections::BTreeMap<String, String> = meta
        .annotations
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k == crate::render::HASH_ANNOTATION || k == SPEC_REVISIONS)
        .collect();
    kept.insert(OBSERVED_METADATA.into(), format!("{observed:x}"));
    meta.annotations = Some(kept);
    meta.labels = None;
    if let Some(refs) = meta.owner_references.as_mut() {
        refs.retain(|o| o.controller == Some(true));
    }
}

/// An annotation on the operator's in-memory copies of Deployments (never written):
/// [`deployment_revisions`] of the live object.
pub const SPEC_REVISIONS: &str = "inputbot.dev/observed-spec-revisions";

/// Two hashes of a Deployment's spec, `with:without` its replica count. A Deployment's
/// generation moves when an HPA scales it, which is not an edit to repair; so the skip check
/// compares the spec without `replicas` when the operator leaves replicas to an autoscaler,
/// and with it otherwise.
pub fn deployment_revisions(d: &Deployment) -> String {
    let spec = d.spec.clone().unwrap_or_default();
    let with = hash_of(serde_json::to_string(&spec).unwrap_or_default());
    let without = hash_of(
        serde_json::to_string(&k8s_openapi::api::apps::v1::DeploymentSpec {
            replicas: None,
            ..spec
        })
        .unwrap_or_default(),
    );
    format!("{with:x}:{without:x}")
}

fn hash_of(value: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// What of a child's metadata a reconcile acts on. Kinds with a generation change it on
/// every spec edit; for the others (ConfigMap, Service) any change counts.
fn child_key(meta: &ObjectMeta) -> u64 {
    let spec_revisions = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(SPEC_REVISIONS));
    match meta.generation {
        Some(g) if g > 0 || spec_revisions => hash_of((
            g,
            &meta.labels,
            &meta.annotations,
            meta.deletion_timestamp.as_ref().map(|t| t.0.to_string()),
            meta.owner_references
                .iter()
                .flatten()
                .map(|o| (&o.uid, o.controller))
                .collect::<Vec<_>>(),
        )),
        None if spec_revisions => hash_of((
            &meta.labels,
            &meta.annotations,
            meta.deletion_timestamp.as_ref().map(|t| t.0.to_string()),
        )),
        _ => hash_of(&meta.resource_version),
    }
}

/// A Deployment's metadata key plus what readiness reads of its status (not the replica
/// counts readiness does not read, nor the conditions' timestamps).
fn deployment_key(d: &Deployment) -> u64 {
    let status = d.status.clone().unwrap_or_default();
    hash_of((
        child_key(&d.metadata),
        status.observed_generation,
        status.updated_replicas,
        status.available_replicas,
    ))
}

/// What of a resource its own reconcile acts on: its spec (generation), its deletion and
/// its finalizers — not its status, which the reconcile itself writes.
fn lifecycle_key<K: Resource>(o: &K) -> u64 {
    let meta = o.meta();
    hash_of((
        meta.generation,
        meta.deletion_timestamp.as_ref().map(|t| t.0.to_string()),
        &meta.finalizers,
    ))
}

/// A referenced resource's spec (a Pipeline's InputBot): its generation.
fn spec_key<K: Resource>(o: &K) -> u64 {
    hash_of(o.meta().generation)
}

/// The objects of a watch whose `key` changed since last seen, and every deleted one. The
/// reflector before it still stores every event; this only decides what wakes a reconcile.
/// A relist forgets the objects it no longer lists.
pub fn changes<K, S>(stream: S, key: fn(&K) -> u64) -> impl Stream<Item = Result<K, watcher::Error>>
where
    K: Resource,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    fn identity<K: Resource>(o: &K) -> String {
        let m = o.meta();
        match &m.uid {
            Some(uid) => uid.clone(),
            None => format!(
                "{}/{}",
                m.namespace.as_deref().unwrap_or(""),
                m.name.as_deref().unwrap_or("")
            ),
        }
    }
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut relisted: Option<HashSet<String>> = None;
    stream.filter_map(move |event| {
        let out = match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Init) => {
                relisted = Some(HashSet::new());
                None
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(listed) = relisted.take() {
                    seen.retain(|id, _| listed.contains(id));
                }
                None
            }
            Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => {
                let id = identity(&o);
                if let Some(listed) = relisted.as_mut() {
                    listed.insert(id.clone());
                }
                let k = key(&o);
                (seen.insert(id, k) != Some(k)).then_some(Ok(o))
            }
            Ok(watcher::Event::Delete(o)) => {
                seen.remove(&identity(&o));
                Some(Ok(o))
            }
        };
        futures::future::ready(out)
    })
}

fn context(
    shared: &Shared,
    stores: ChildStores,
    deployments: Store<Deployment>,
    references: References,
) -> Arc<Context> {
    Arc::new(Context {
        client: shared.client.clone(),
        recorder: crate::events::Recorder::new(shared.client.clone(), shared.reporter.clone()),
        metrics: shared.metrics.clone(),
        settings: shared.settings.clone(),
        topics: shared.topics.clone(),
        stores,
        deployments,
        references,
        applied: Default::default(),
        rollouts: Default::default(),
        topics_ready: Default::default(),
        warned: Default::default(),
        failures: Default::default(),
        capabilities: Default::default(),
    })
}

fn guarded<K: Reconciled>(client: &Client, namespace: Option<&str>) -> Api<DeserializeGuard<K>> {
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The controllers of one namespace (or all), ready to run until `shutdown` completes.
pub async fn controllers(
    shared: Shared,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) -> Vec<BoxFuture<'static, ()>> {
    let ns = namespace.as_deref();
    let client = &shared.client;
    let config = Config::default()
        .concurrency(shared.concurrency)
        .debounce(DEBOUNCE);
    let keda = {
        let probe = context(
            &shared,
            HashMap::new(),
            reflector::store::Writer::default().as_reader(),
            References::default(),
        );
        probe.capabilities().await.keda
    };
    let mut consumer_kinds = vec![ChildKind::ConfigMap, ChildKind::HorizontalPodAutoscaler];
    if keda {
        consumer_kinds.push(ChildKind::ScaledObject);
    }
    info!(
        namespace = ns.unwrap_or("<all>"),
        keda, "starting controllers"
    );

    // InputBot: owns every intake child.
    let (stores, streams) = metadata_stores(
        client,
        ns,
        "InputBot",
        &[
            ChildKind::ConfigMap,
            ChildKind::Service,
            ChildKind::PodDisruptionBudget,
            ChildKind::Ingress,
            ChildKind::HorizontalPodAutoscaler,
        ],
    );
    let (deployments, deployment_changes) = deployment_store(client, ns, "InputBot");
    let (bots, bot_store) = main_controller::<InputBot>(client, ns);
    let mut bots = bots
        .with_config(config.clone())
        .owns_stream(deployment_changes);
    for (kind, stream) in streams {
        bots = bots.owns_stream_with(stream, kind.api_resource());
    }
    let bot_ctx = context(&shared, stores, deployments, References::default());
    let bots = bots
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile::<InputBot>, error_policy::<InputBot>, bot_ctx)
        .for_each(log_result)
        .boxed();

    // Pipeline: its children, plus every spec change of the InputBot it references.
    let (stores, streams) = metadata_stores(client, ns, "Pipeline", &consumer_kinds);
    let (deployments, deployment_changes) = deployment_store(client, ns, "Pipeline");
    let (pipelines, pipeline_store) = main_controller::<Pipeline>(client, ns);
    let mut pipelines = pipelines
        .with_config(config.clone())
        .owns_stream(deployment_changes);
    for (kind, stream) in streams {
        pipelines = pipelines.owns_stream_with(stream, kind.api_resource());
    }
    let by_bot = pipeline_store.clone();
    let pipelines = pipelines
        .watches_stream(spec_changes(guarded::<InputBot>(client, ns)), move |bot| {
            by_bot
                .state()
                .iter()
                .filter_map(|g| g.0.as_ref().ok())
                .filter(|p| pipeline::references(p, &bot.namespace(), &bot.name_any()))
                .map(|p| ObjectRef::new(&p.name_any()).within(&p.namespace().unwrap_or_default()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(
            reconcile::<Pipeline>,
            error_policy::<Pipeline>,
            context(
                &shared,
                stores,
                deployments,
                References {
                    bots: Some(bot_store.clone()),
                    pipelines: None,
                },
            ),
        )
        .for_each(log_result)
        .boxed();

    // ActionBinding: its children, plus its Pipeline or InputBot.
    let (stores, streams) = metadata_stores(client, ns, "ActionBinding", &consumer_kinds);
    let (deployments, deployment_changes) = deployment_store(client, ns, "ActionBinding");
    let (bindings, binding_store) = main_controller::<ActionBinding>(client, ns);
    let mut bindings = bindings.with_config(config).owns_stream(deployment_changes);
    for (kind, stream) in streams {
        bindings = bindings.owns_stream_with(stream, kind.api_resource());
    }
    let by_pipeline = binding_store.clone();
    let by_bot = binding_store;
    let bindings = bindings
        .watches_stream(spec_changes(guarded::<Pipeline>(client, ns)), move |p| {
            matching(&by_pipeline, &p.namespace(), |b| {
                binding::reads_pipeline(b, &p.name_any())
            })
        })
        .watches_stream(spec_changes(guarded::<InputBot>(client, ns)), move |bot| {
            matching(&by_bot, &bot.namespace(), |b| {
                binding::reads_bot(b, &bot.name_any())
            })
        })
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile::<ActionBinding>,
            error_policy::<ActionBinding>,
            context(
                &shared,
                stores,
                deployments,
                References {
                    bots: Some(bot_store),
                    pipelines: Some(pipeline_store),
                },
            ),
        )
        .for_each(log_result)
        .boxed();

    vec![bots, pipelines, bindings]
}

fn matching(
    store: &Store<DeserializeGuard<ActionBinding>>,
    namespace: &Option<String>,
    pred: impl Fn(&ActionBinding) -> bool,
) -> Vec<ObjectRef<DeserializeGuard<ActionBinding>>> {
    store
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|b| &b.namespace() == namespace && pred(b))
        .map(|b| ObjectRef::new(&b.name_any()).within(&b.namespace().unwrap_or_default()))
        .collect()
}

async fn log_result<K, E: std::fmt::Debug>(
    result: Result<(ObjectRef<K>, kube::runtime::controller::Action), E>,
) where
    K: kube::Resource,
    K::DynamicType: std::fmt::Debug,
{
    if let Err(e) = result {
        // Reconcile errors are logged by error_policy; what reaches here is the watch's.
        tracing::debug!(error = ?e, "controller stream");
    }
}

/// The annotation in which client-side `kubectl apply` keeps the last applied object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The controller of a kind and its store, watching it through `DeserializeGuard` (one
/// malformed object never stops the watch), keeping it without managedFields, which nothing
/// reads, and waking only on what a reconcile acts on ([`lifecycle_key`]).
fn main_controller<K: Reconciled>(
    client: &Client,
    ns: Option<&str>,
) -> (Controller<DeserializeGuard<K>>, Store<DeserializeGuard<K>>) {
    let (reader, writer) = reflector::store();
    let stream = changes(
        reflector(
            writer,
            watcher(guarded::<K>(client, ns), watcher::Config::default())
                .modify(|g: &mut DeserializeGuard<K>| {
                    let meta = match &mut g.0 {
                        Ok(o) => o.meta_mut(),
                        Err(e) => &mut e.metadata,
                    };
                    meta.managed_fields = None;
                    // `kubectl apply` (client-side) keeps a copy of the whole object here.
                    if let Some(a) = meta.annotations.as_mut() {
                        a.remove(LAST_APPLIED);
                    }
                })
                .default_backoff(),
        ),
        lifecycle_key::<DeserializeGuard<K>>,
    );
    (Controller::for_stream(stream, reader.clone()), reader)
}

/// Objects of a referenced kind when their spec changes, when they appear and when they go
/// (a status update of an InputBot never wakes its Pipelines). Guarded, so one malformed
/// object does not stop the watch.
fn spec_changes<K: Reconciled>(
    api: Api<DeserializeGuard<K>>,
) -> impl Stream<Item = Result<DeserializeGuard<K>, watcher::Error>> + Send + 'static {
    changes(
        watcher(api, watcher::Config::default()).default_backoff(),
        spec_key::<DeserializeGuard<K>>,
    )
}
