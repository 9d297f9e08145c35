//! Building and running the three controllers: the watches on each kind, on the children
//! (by metadata only, into stores the no-op check reads) and across kinds (a Pipeline
//! reconciles when its InputBot changes; an ActionBinding when its Pipeline or InputBot does).

use std::{collections::HashMap, sync::Arc};

use futures::{FutureExt, StreamExt, future::BoxFuture};
use inputbot_api::{ActionBinding, InputBot, Pipeline};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, PartialObjectMeta},
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt,
        controller::Config,
        events::{Recorder, Reporter},
        reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tracing::info;

use super::{Reconciled, binding, error_policy, pipeline, reconcile};
use crate::{
    context::Context,
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

/// Metadata watches of the children of one kind of owner, with the stores they fill.
pub fn metadata_stores(
    client: &Client,
    namespace: Option<&str>,
    owner_kind: &str,
    kinds: &[ChildKind],
) -> (ChildStores, Vec<(ChildKind, ChildStream)>) {
    let mut stores = HashMap::new();
    let mut streams = Vec::new();
    for kind in kinds {
        let ar = kind.api_resource();
        // An Api of PartialObjectMeta makes metadata-only requests.
        let api: Api<PartialObjectMeta<DynamicObject>> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let writer = reflector::store::Writer::new(ar.clone());
        stores.insert(*kind, writer.as_reader());
        let config = watcher::Config::default().labels(&format!(
            "app.kubernetes.io/managed-by={},{OWNER_KIND_LABEL}={}",
            crate::render::MANAGED_BY,
            owner_kind.to_ascii_lowercase()
        ));
        let stream = reflector(
            writer,
            watcher(api, config)
                // managedFields are most of an object's metadata and nothing here reads them.
                .modify(|m| m.metadata.managed_fields = None)
                .default_backoff(),
        )
        .touched_objects()
        .boxed();
        streams.push((*kind, stream));
    }
    (stores, streams)
}

fn context(
    shared: &Shared,
    stores: HashMap<ChildKind, Store<PartialObjectMeta<DynamicObject>>>,
) -> Arc<Context> {
    Arc::new(Context {
        client: shared.client.clone(),
        recorder: Recorder::new(shared.client.clone(), shared.reporter.clone()),
        metrics: shared.metrics.clone(),
        settings: shared.settings.clone(),
        topics: shared.topics.clone(),
        stores,
        applied: Default::default(),
        topics_ready: Default::default(),
        pruned: Default::default(),
        failures: Default::default(),
        capabilities: Default::default(),
    })
}

fn api<K: Reconciled>(client: &Client, namespace: Option<&str>) -> Api<K> {
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
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
    let config = Config::default().concurrency(shared.concurrency);
    let keda = {
        let probe = context(&shared, HashMap::new());
        probe.capabilities().await.keda
    };
    let mut consumer_kinds = vec![
        ChildKind::ConfigMap,
        ChildKind::Deployment,
        ChildKind::HorizontalPodAutoscaler,
    ];
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
            ChildKind::Deployment,
            ChildKind::Service,
            ChildKind::PodDisruptionBudget,
            ChildKind::Ingress,
            ChildKind::HorizontalPodAutoscaler,
        ],
    );
    let mut bots = main_controller::<InputBot>(client, ns).with_config(config.clone());
    for (kind, stream) in streams {
        bots = bots.owns_stream_with(stream, kind.api_resource());
    }
    let bot_ctx = context(&shared, stores);
    let bots = bots
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile::<InputBot>, error_policy::<InputBot>, bot_ctx)
        .for_each(log_result)
        .boxed();

    // Pipeline: its children, plus every change of the InputBot it references.
    let (stores, streams) = metadata_stores(client, ns, "Pipeline", &consumer_kinds);
    let mut pipelines = main_controller::<Pipeline>(client, ns).with_config(config.clone());
    for (kind, stream) in streams {
        pipelines = pipelines.owns_stream_with(stream, kind.api_resource());
    }
    let pipeline_store = pipelines.store();
    let pipelines = pipelines
        .watches_stream(spec_changes(api::<InputBot>(client, ns)), move |bot| {
            pipeline_store
                .state()
                .iter()
                .filter_map(|g| g.0.as_ref().ok())
                .filter(|p| pipeline::references(p, &bot))
                .map(|p| ObjectRef::new(&p.name_any()).within(&p.namespace().unwrap_or_default()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(
            reconcile::<Pipeline>,
            error_policy::<Pipeline>,
            context(&shared, stores),
        )
        .for_each(log_result)
        .boxed();

    // ActionBinding: its children, plus its Pipeline or InputBot.
    let (stores, streams) = metadata_stores(client, ns, "ActionBinding", &consumer_kinds);
    let mut bindings = main_controller::<ActionBinding>(client, ns).with_config(config);
    for (kind, stream) in streams {
        bindings = bindings.owns_stream_with(stream, kind.api_resource());
    }
    let by_pipeline = bindings.store();
    let by_bot = bindings.store();
    let bindings = bindings
        .watches(
            api::<Pipeline>(client, ns),
            watcher::Config::default(),
            move |p| {
                matching(&by_pipeline, &p.namespace(), |b| {
                    binding::reads_pipeline(b, &p.name_any())
                })
            },
        )
        .watches(
            api::<InputBot>(client, ns),
            watcher::Config::default(),
            move |bot| {
                matching(&by_bot, &bot.namespace(), |b| {
                    binding::reads_bot(b, &bot.name_any())
                })
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile::<ActionBinding>,
            error_policy::<ActionBinding>,
            context(&shared, stores),
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

/// The controller of a kind, watching it through `DeserializeGuard` (one malformed object
/// never stops the watch) and keeping it without managedFields, which nothing reads.
fn main_controller<K: Reconciled>(
    client: &Client,
    ns: Option<&str>,
) -> Controller<DeserializeGuard<K>> {
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(guarded::<K>(client, ns), watcher::Config::default())
            .modify(|g: &mut DeserializeGuard<K>| match &mut g.0 {
                Ok(o) => o.meta_mut().managed_fields = None,
                Err(e) => e.metadata.managed_fields = None,
            })
            .default_backoff(),
    )
    .applied_objects();
    Controller::for_stream(stream, reader)
}

/// Objects of a referenced kind, only when their spec changes (a status update of an InputBot
/// never wakes its Pipelines).
fn spec_changes<K>(
    api: Api<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .predicate_filter(kube::runtime::predicates::generation, Default::default())
}
