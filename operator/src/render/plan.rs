//! Plan: one resource (plus the resources it references) → validated, resolved, rendered.
//! Pure: the controllers fetch the inputs, `render -f` reads them from files; both get the
//! same children, topics and status facts from here.

use std::collections::BTreeMap;

use inputbot_api::{
    ActionBinding, InputBot, Pipeline,
    common::{TopicSettings, Workload},
    config::ComponentConfig,
    manifest::ResourceSet,
    names, resolve,
    validate::{self, Options, Problem, Severity},
};
use kube::ResourceExt;
use serde_json::Value;

use super::{
    Child, Owner, autoscaler,
    component::{self, ComponentSpec},
    ingress, service,
};
use crate::{settings::Settings, topics::TopicRequest};

/// What the cluster offers beyond core Kubernetes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// KEDA's ScaledObject CRD is installed.
    pub keda: bool,
}

/// Why a resource cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The spec fails validation; every problem names its field.
    #[error("{}", .0.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
}

/// The state of a component's autoscaling, for the `AutoscalingReady` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AutoscalingState {
    /// No autoscaling asked for.
    Off,
    /// An HPA or a ScaledObject is rendered.
    Rendered,
    /// Lag scaling asked for, but KEDA is not installed: replicas are fixed at the minimum.
    KedaMissing,
}

/// Everything a reconcile needs to know about one resource.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The resource.
    pub owner: Owner,
    /// Children in apply order.
    pub children: Vec<Child>,
    /// Topics the resource owns.
    pub topics: Vec<TopicRequest>,
    /// Deployments whose availability makes the workload ready.
    pub deployments: Vec<String>,
    /// Per Deployment, the available replicas that make it ready: its replicas, or under an
    /// autoscaler its minimum (so that scaling up, which briefly leaves new pods unavailable,
    /// never turns a running bot not-ready).
    pub min_available: std::collections::BTreeMap<String, i32>,
    /// Things worth a Warning event (e.g. replicas capped at partitions).
    pub warnings: Vec<String>,
    /// Autoscaling state.
    pub autoscaling: AutoscalingState,
    /// Webhook URLs by source name (InputBots only).
    pub endpoints: Vec<(String, String)>,
    /// Topic read, written and dead-lettered to.
    pub input_topic: Option<String>,
    /// Topic produced to.
    pub output_topic: Option<String>,
    /// Dead-letter topic.
    pub dead_letter_topic: Option<String>,
}

impl Plan {
    fn new(owner: Owner) -> Plan {
        Plan {
            owner,
            children: Vec::new(),
            topics: Vec::new(),
            deployments: Vec::new(),
            min_available: Default::default(),
            warnings: Vec::new(),
            autoscaling: AutoscalingState::Off,
            endpoints: Vec::new(),
            input_topic: None,
            output_topic: None,
            dead_letter_topic: None,
        }
    }
}

/// Validates one resource within `set` (which holds it and what it references); only its own
/// problems count.
fn check(set: &ResourceSet, kind: &str, namespace: &str, name: &str) -> Result<(), PlanError> {
    let id = format!("{kind} {namespace}/{name}");
    let errors: Vec<Problem> = validate::validate(set, Options::OPERATOR)
        .into_iter()
        .filter(|p| p.severity == Severity::Error && p.resource == id)
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PlanError::Invalid(errors))
    }
}

fn ns<K: kube::Resource>(r: &K) -> String {
    r.namespace().unwrap_or_else(|| "default".into())
}

fn partitions(topic: Option<&TopicSettings>, settings: &Settings) -> i32 {
    topic
        .and_then(|t| t.partitions)
        .unwrap_or(settings.default_partitions)
}

fn topic(name: String, settings_of: Option<&TopicSettings>, settings: &Settings) -> TopicRequest {
    let retention = settings_of
        .and_then(|t| t.retention.as_ref())
        .map(|d| d.0.clone())
        .unwrap_or_else(|| settings.default_retention.clone());
    let mut config = BTreeMap::new();
    if let Ok(d) = inputbot_api::common::parse_duration(&retention) {
        config.insert("retention.ms".to_owned(), d.as_millis().to_string());
    }
    TopicRequest {
        name,
        partitions: partitions(settings_of, settings),
        replication_factor: settings_of
            .and_then(|t| t.replication_factor)
            .unwrap_or(settings.default_replication_factor),
        config,
    }
}

/// Adds a component's ConfigMap, Deployment and autoscaler to the plan. `cap` is the input
/// topic's partition count for consumers (no replica beyond it has work).
#[allow(clippy::too_many_arguments)]
fn add_component(
    plan: &mut Plan,
    settings: &Settings,
    caps: Capabilities,
    component_name: &'static str,
    role: &'static str,
    config: &ComponentConfig,
    workload: Option<&Workload>,
    cap: Option<i32>,
    lag: Option<(&str, &str)>,
) {
    let owner = plan.owner.clone();
    let child = names::child_name(&owner.name, component_name);
    let capped = |n: i32, what: &str, plan: &mut Plan| -> i32 {
        match cap {
            Some(p) if n > p => {
                plan.warnings.push(format!(
                    "{what} {n} capped at {p}: the topic has {p} partitions, and a consumer beyond that would have no work"
                ));
                p
            }
            _ => n,
        }
    };
    let mut replicas = workload.and_then(|w| w.replicas).unwrap_or(1);
    let mut floor = None;
    let mut autoscaled = false;
    let mut autoscaler = None;
    if let Some(a) = workload.and_then(|w| w.autoscaling.as_ref()) {
        let max = capped(a.max_replicas, "spec autoscaling.maxReplicas", plan);
        let min = a.min_replicas.min(max);
        floor = Some(min);
        match (&a.lag, lag) {
            (Some(l), Some((group, topic))) if caps.keda => {
                autoscaled = true;
                autoscaler = Some(Child::ScaledObject(autoscaler::scaled_object(
                    &owner,
                    component_name,
                    min,
                    max,
                    &autoscaler::LagTrigger {
                        bootstrap: &settings.kafka.bootstrap,
                        consumer_group: group,
                        topic,
                        lag_threshold: l.target,
                    },
                )));
                plan.autoscaling = AutoscalingState::Rendered;
            }
            (Some(_), _) => {
                replicas = min;
                plan.autoscaling = AutoscalingState::KedaMissing;
            }
            (None, _) => {
                autoscaled = true;
                autoscaler = Some(Child::HorizontalPodAutoscaler(autoscaler::hpa(
                    &owner,
                    component_name,
                    min,
                    max,
                    a.target_cpu_utilization.unwrap_or(70),
                )));
                plan.autoscaling = AutoscalingState::Rendered;
            }
        }
    } else {
        replicas = capped(replicas, "replicas", plan);
    }
    let (cm, deploy) = component::render(
        &ComponentSpec {
            owner: &owner,
            component: component_name,
            role,
            config,
            replicas,
            autoscaled,
            singleton: false,
            workload,
        },
        settings,
    );
    plan.children.push(Child::ConfigMap(cm));
    plan.children.push(Child::Deployment(deploy));
    plan.children.extend(autoscaler);
    plan.min_available.insert(
        child.clone(),
        if autoscaled {
            floor.unwrap_or(1)
        } else {
            replicas
        },
    );
    plan.deployments.push(child);
}

/// Renders an InputBot.
pub fn plan_bot(
    bot: &InputBot,
    settings: &Settings,
    caps: Capabilities,
) -> Result<Plan, PlanError> {
    let namespace = ns(bot);
    let name = bot.name_any();
    let set = ResourceSet {
        bots: vec![bot.clone()],
        ..ResourceSet::default()
    };
    check(&set, "InputBot", &namespace, &name)?;
    let resolved = resolve::resolve_bot(bot);
    let mut plan = Plan::new(Owner::of("InputBot", bot, &name));
    plan.topics.push(topic(
        resolved.topic.clone(),
        bot.spec.topic.as_ref(),
        settings,
    ));
    plan.output_topic = Some(resolved.topic.clone());
    // The deduplication window of the raw topic's consumers: one partition per raw partition
    // (the owner of raw partition p rebuilds its window from partition p), compacted to the
    // newest entry per key, and deleted after the raw topic's retention like the events it
    // describes.
    let mut dedupe = topic(
        names::dedupe_topic(&namespace, &name),
        bot.spec.topic.as_ref(),
        settings,
    );
    dedupe
        .config
        .insert("cleanup.policy".to_owned(), "compact,delete".to_owned());
    plan.topics.push(dedupe);
    // Source state (poll's seen ids and validators, schedule's last firing): one small record
    // per source, kept for ever (compacted, never deleted by age).
    if let Some(state) = &resolved.state_topic {
        plan.topics.push(TopicRequest {
            name: state.clone(),
            partitions: 1,
            replication_factor: bot
                .spec
                .topic
                .as_ref()
                .and_then(|t| t.replication_factor)
                .unwrap_or(settings.default_replication_factor),
            config: BTreeMap::from([("cleanup.policy".to_owned(), "compact".to_owned())]),
        });
    }

    // Push sources (webhook) and consumer sources (kafka) scale out; poll and schedule must
    // never run twice at once, so they get a single-replica, Recreate Deployment of their own.
    let (timed, pushed): (Vec<_>, Vec<_>) = resolved
        .sources
        .iter()
        .cloned()
        .partition(|s| s.poll.is_some() || s.schedule.is_some());
    let workload = bot.spec.ingest.as_ref().map(|i| &i.workload);
    if !pushed.is_empty() {
        let config = ComponentConfig::Ingest(inputbot_api::config::IngestConfig {
            sources: pushed.clone(),
            // Only the poller keeps source state.
            state_topic: None,
            ..resolved.clone()
        });
        add_component(
            &mut plan, settings, caps, "ingest", "ingest", &config, workload, None, None,
        );
        let min_replicas = workload
            .and_then(|w| {
                w.autoscaling
                    .as_ref()
                    .map(|a| a.min_replicas)
                    .or(w.replicas)
            })
            .unwrap_or(1);
        let owner = plan.owner.clone();
        plan.children
            .push(Child::Service(service::service(&owner, "ingest")));
        if min_replicas > 1 {
            plan.children
                .push(Child::PodDisruptionBudget(service::disruption_budget(
                    &owner, "ingest",
                )));
        }
        let paths: Vec<String> = pushed
            .iter()
            .filter_map(|s| s.webhook.as_ref().map(|w| w.path.clone()))
            .collect();
        let expose = bot.spec.ingest.as_ref().and_then(|i| i.expose.as_ref());
        if let (Some(expose), false) = (expose, paths.is_empty()) {
            plan.children.push(Child::Ingress(ingress::ingress(
                &owner, "ingest", expose, &paths,
            )));
        }
        for s in &pushed {
            if let Some(w) = &s.webhook {
                let url = match expose {
                    Some(e) => format!(
                        "{}://{}{}",
                        if e.tls.is_some() { "https" } else { "http" },
                        e.host,
                        w.path
                    ),
                    None => format!(
                        "http://{}.{}.{}:{}{}",
                        names::child_name(&name, "ingest"),
                        namespace,
                        settings.service_domain,
                        super::RUNTIME_PORT,
                        w.path
                    ),
                };
                plan.endpoints.push((s.name.clone(), url));
            }
        }
    }
    if !timed.is_empty() {
        let config = ComponentConfig::Ingest(inputbot_api::config::IngestConfig {
            sources: timed,
            ..resolved
        });
        let owner = plan.owner.clone();
        let (cm, deploy) = component::render(
            &ComponentSpec {
                owner: &owner,
                component: "poller",
                role: "ingest",
                config: &config,
                replicas: 1,
                autoscaled: false,
                singleton: true,
                // The bot's resources apply; its replicas and autoscaling are the intake's.
                workload: workload
                    .map(|w| Workload {
                        resources: w.resources.clone(),
                        ..Workload::default()
                    })
                    .as_ref(),
            },
            settings,
        );
        plan.children.push(Child::ConfigMap(cm));
        plan.children.push(Child::Deployment(deploy));
        plan.min_available
            .insert(names::child_name(&name, "poller"), 1);
        plan.deployments.push(names::child_name(&name, "poller"));
    }
    plan.children.sort_by_key(Child::kind);
    Ok(plan)
}

/// Renders a Pipeline whose InputBot was found.
pub fn plan_pipeline(
    pipeline: &Pipeline,
    bot: &InputBot,
    settings: &Settings,
    caps: Capabilities,
) -> Result<Plan, PlanError> {
    let namespace = ns(pipeline);
    let name = pipeline.name_any();
    let set = ResourceSet {
        bots: vec![bot.clone()],
        pipelines: vec![pipeline.clone()],
        ..ResourceSet::default()
    };
    check(&set, "Pipeline", &namespace, &name)?;
    let resolved = resolve::resolve_pipeline(pipeline);
    let mut plan = Plan::new(Owner::of("Pipeline", pipeline, &bot.name_any()));
    let own = pipeline.spec.topic.as_ref();
    plan.topics
        .push(topic(resolved.output_topic.clone(), own, settings));
    plan.topics
        .push(topic(resolved.dead_letter_topic.clone(), own, settings));
    plan.input_topic = Some(resolved.input_topic.clone());
    plan.output_topic = Some(resolved.output_topic.clone());
    plan.dead_letter_topic = Some(resolved.dead_letter_topic.clone());
    let cap = partitions(bot.spec.topic.as_ref(), settings);
    let group = resolved.consumer_group.clone();
    let input = resolved.input_topic.clone();
    add_component(
        &mut plan,
        settings,
        caps,
        "process",
        "process",
        &ComponentConfig::Process(resolved),
        pipeline.spec.processing.as_ref().map(|p| &p.workload),
        Some(cap),
        Some((&group, &input)),
    );
    plan.children.sort_by_key(Child::kind);
    Ok(plan)
}

/// What an ActionBinding reads from: its Pipeline, or its InputBot directly.
#[derive(Clone, Copy, Debug)]
pub enum BindingInputs<'a> {
    /// `pipelineRef`: the Pipeline and the InputBot it belongs to (`None` if not found).
    Pipeline(&'a Pipeline, Option<&'a InputBot>),
    /// `botRef`.
    Bot(&'a InputBot),
}

/// The pipeline inputs of a Pipeline (re-exported for symmetry with [`BindingInputs`]).
pub type PipelineInputs<'a> = (&'a Pipeline, &'a InputBot);

/// Renders an ActionBinding whose reference was found.
pub fn plan_binding(
    binding: &ActionBinding,
    inputs: BindingInputs<'_>,
    settings: &Settings,
    caps: Capabilities,
) -> Result<Plan, PlanError> {
    let namespace = ns(binding);
    let name = binding.name_any();
    let mut set = ResourceSet {
        bindings: vec![binding.clone()],
        ..ResourceSet::default()
    };
    let (bot_name, cap) = match inputs {
        BindingInputs::Pipeline(p, _) => {
            set.pipelines.push(p.clone());
            (
                p.spec.bot_ref.name.clone(),
                partitions(p.spec.topic.as_ref(), settings),
            )
        }
        BindingInputs::Bot(b) => {
            set.bots.push(b.clone());
            (b.name_any(), partitions(b.spec.topic.as_ref(), settings))
        }
    };
    if let BindingInputs::Pipeline(_, Some(bot)) = inputs {
        set.bots.push(bot.clone());
    }
    check(&set, "ActionBinding", &namespace, &name)?;
    let resolved = resolve::resolve_binding(binding);
    let mut plan = Plan::new(Owner::of("ActionBinding", binding, &bot_name));
    if let Some(dlq) = &resolved.dead_letter_topic {
        plan.topics
            .push(topic(dlq.clone(), binding.spec.topic.as_ref(), settings));
    }
    plan.input_topic = Some(resolved.input_topic.clone());
    plan.dead_letter_topic = resolved.dead_letter_topic.clone();
    let group = resolved.consumer_group.clone();
    let input = resolved.input_topic.clone();
    add_component(
        &mut plan,
        settings,
        caps,
        "act",
        "act",
        &ComponentConfig::Act(resolved),
        binding.spec.workers.as_ref(),
        Some(cap),
        Some((&group, &input)),
    );
    plan.children.sort_by_key(Child::kind);
    Ok(plan)
}

/// `inputbot-operator render`: every object the operator would create for the resources in
/// `set`, as JSON values in apply order (Secrets in the files are read by nobody).
pub fn render_files(
    set: &ResourceSet,
    settings: &Settings,
    caps: Capabilities,
) -> Result<Vec<Value>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let find_bot = |ns: &str, name: &str| {
        set.bots
            .iter()
            .find(|b| b.name_any() == name && self::ns(*b) == ns)
    };
    fn push(
        out: &mut Vec<Value>,
        errors: &mut Vec<String>,
        result: Result<Plan, PlanError>,
        what: String,
    ) {
        match result {
            Ok(plan) => out.extend(plan.children.into_iter().map(|c| c.with_hash().0)),
            Err(e) => errors.push(format!("{what}: {e}")),
        }
    }
    for bot in &set.bots {
        push(
            &mut out,
            &mut errors,
            plan_bot(bot, settings, caps),
            format!("InputBot {}/{}", ns(bot), bot.name_any()),
        );
    }
    for p in &set.pipelines {
        let what = format!("Pipeline {}/{}", ns(p), p.name_any());
        match find_bot(&ns(p), &p.spec.bot_ref.name) {
            Some(bot) => push(
                &mut out,
                &mut errors,
                plan_pipeline(p, bot, settings, caps),
                what,
            ),
            None => errors.push(format!(
                "{what}: spec.botRef: InputBot {:?} is not in the files",
                p.spec.bot_ref.name
            )),
        }
    }
    for b in &set.bindings {
        let what = format!("ActionBinding {}/{}", ns(b), b.name_any());
        let inputs = match (&b.spec.pipeline_ref, &b.spec.bot_ref) {
            (Some(r), _) => set
                .pipelines
                .iter()
                .find(|p| p.name_any() == r.name && ns(*p) == ns(b))
                .map(|p| BindingInputs::Pipeline(p, find_bot(&ns(p), &p.spec.bot_ref.name)))
                .ok_or_else(|| {
                    format!(
                        "{what}: spec.pipelineRef: Pipeline {:?} is not in the files",
                        r.name
                    )
                }),
            (None, Some(r)) => find_bot(&ns(b), &r.name)
                .map(BindingInputs::Bot)
                .ok_or_else(|| {
                    format!(
                        "{what}: spec.botRef: InputBot {:?} is not in the files",
                        r.name
                    )
                }),
            (None, None) => Err(format!("{what}: spec: set pipelineRef or botRef")),
        };
        match inputs {
            Ok(inputs) => push(
                &mut out,
                &mut errors,
                plan_binding(b, inputs, settings, caps),
                what,
            ),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}
