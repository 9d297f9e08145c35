//! Resolve: a validated set of resources → one runtime config per component. The single code
//! path that both the operator (one resource per reconcile) and `inputbot run` (every resource
//! of the files) use, so that a bot behaves the same in both places.

use std::time::Duration;

use kube::ResourceExt;

use crate::{
    ActionBinding, InputBot, Pipeline,
    config::{
        ActConfig, BreakerPolicy, DeliveryPolicy, IngestConfig, NamedStep, ProcessConfig, Resolved,
        ResourceId, RetryPolicy,
    },
    defaults::namespace_of as namespace,
    manifest::ResourceSet,
    names,
    validate::{self, Options, Problem, Severity},
};

// Kept here too, where the operator and older callers look for them.
pub use crate::defaults::{DEFAULT_MAX_IN_FLIGHT, DEFAULT_PARTITIONS, parse_cron, step_name};

/// Validates and resolves every resource of the set. Errors stop resolution; warnings do not.
pub fn resolve(set: &ResourceSet, options: Options) -> Result<Resolved, Vec<Problem>> {
    let problems = validate::validate(set, options);
    if validate::has_errors(&problems) {
        return Err(problems
            .into_iter()
            .filter(|p| p.severity == Severity::Error)
            .collect());
    }
    Ok(Resolved {
        ingest: set.bots.iter().map(resolve_bot).collect(),
        process: set.pipelines.iter().map(resolve_pipeline).collect(),
        act: set.bindings.iter().map(resolve_binding).collect(),
    })
}

/// The ingest config of a validated bot.
pub fn resolve_bot(bot: &InputBot) -> IngestConfig {
    let ns = namespace(bot);
    IngestConfig {
        bot: ResourceId::new("InputBot", &ns, &bot.name_any()),
        topic: names::raw_topic(&ns, &bot.name_any()),
        sources: bot.spec.sources.clone(),
        state_topic: bot
            .spec
            .sources
            .iter()
            .any(|s| s.poll.is_some() || s.schedule.is_some())
            .then(|| names::state_topic(&ns, &bot.name_any())),
    }
}

/// The process config of a validated pipeline.
pub fn resolve_pipeline(p: &Pipeline) -> ProcessConfig {
    let ns = namespace(p);
    let name = p.name_any();
    ProcessConfig {
        pipeline: ResourceId::new("Pipeline", &ns, &name),
        bot: ResourceId::new("InputBot", &ns, &p.spec.bot_ref.name),
        input_topic: names::raw_topic(&ns, &p.spec.bot_ref.name),
        output_topic: names::out_topic(&ns, &name),
        dead_letter_topic: names::pipeline_dlq_topic(&ns, &name),
        consumer_group: names::consumer_group(&ns, &name, "process"),
        dedupe_topic: Some(names::dedupe_topic(&ns, &p.spec.bot_ref.name)),
        steps: p
            .spec
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| NamedStep {
                name: step_name(step, i),
                // The resolved name is `NamedStep::name`; keeping the step's own as well would
                // write a second `name` key into the flattened JSON the operator mounts, which
                // no reader accepts.
                step: crate::pipeline::Step {
                    name: None,
                    ..step.clone()
                },
            })
            .collect(),
        max_in_flight: p
            .spec
            .processing
            .as_ref()
            .and_then(|p| p.max_in_flight)
            .unwrap_or(DEFAULT_MAX_IN_FLIGHT),
    }
}

/// The act config of a validated binding.
pub fn resolve_binding(b: &ActionBinding) -> ActConfig {
    let ns = namespace(b);
    let name = b.name_any();
    let input_topic = match (&b.spec.pipeline_ref, &b.spec.bot_ref) {
        (Some(p), _) => names::out_topic(&ns, &p.name),
        (None, Some(bot)) => names::raw_topic(&ns, &bot.name),
        // Validation rejects this; an empty topic can never be consumed.
        (None, None) => String::new(),
    };
    let delivery = b.spec.delivery.clone().unwrap_or_default();
    let retry = RetryPolicy::from_spec(delivery.retry.as_ref(), 5, Duration::from_secs(60));
    let dur = |d: Option<&crate::common::Duration>, default: Duration| {
        d.and_then(|d| d.to_std().ok()).unwrap_or(default)
    };
    let cb = delivery.circuit_breaker;
    let circuit_breaker = BreakerPolicy {
        failure_ratio: cb.as_ref().and_then(|c| c.failure_ratio).unwrap_or(0.5),
        min_requests: cb.as_ref().and_then(|c| c.min_requests).unwrap_or(10),
        window: dur(
            cb.as_ref().and_then(|c| c.window.as_ref()),
            Duration::from_secs(60),
        ),
        open_for: dur(
            cb.as_ref().and_then(|c| c.open_for.as_ref()),
            Duration::from_secs(30),
        ),
    };
    let dead_letter = delivery.dead_letter.map(|d| d.enabled).unwrap_or(true);
    ActConfig {
        binding: ResourceId::new("ActionBinding", &ns, &name),
        input_topic,
        dead_letter_topic: dead_letter.then(|| names::binding_dlq_topic(&ns, &name)),
        consumer_group: names::consumer_group(&ns, &name, "act"),
        dedupe_topic: match (&b.spec.pipeline_ref, &b.spec.bot_ref) {
            (None, Some(bot)) => Some(names::dedupe_topic(&ns, &bot.name)),
            _ => None,
        },
        when: b.spec.when.clone(),
        action: b.spec.action.clone(),
        delivery: DeliveryPolicy {
            retry,
            circuit_breaker,
            rate_limit: delivery.rate_limit,
            dead_letter,
        },
        notify: b.spec.notify.clone(),
        max_in_flight: DEFAULT_MAX_IN_FLIGHT,
    }
}
