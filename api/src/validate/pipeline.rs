//! Pipeline: the bot it reads, unique step names, each step's schema, jq, URL, headers and
//! CEL, and the processing workload against the input topic's partitions.

use std::collections::BTreeSet;

use kube::ResourceExt;

use super::Checker;
use crate::{
    InputBot, Pipeline,
    defaults::{self, DEFAULT_PARTITIONS},
    expr::Scope,
    names,
    pipeline::StepKind,
};

impl<'a> Checker<'a> {
    pub(super) fn pipeline(&mut self, p: &Pipeline) {
        let name = p.name_any();
        let ns = self.namespace.clone();
        self.names(&name, "process");
        self.topic(&names::out_topic(&ns, &name));
        self.topic(&names::pipeline_dlq_topic(&ns, &name));
        let bot = self.bot_ref("spec.botRef.name", &p.spec.bot_ref.name);
        let partitions = bot
            .and_then(|b| b.spec.topic.as_ref())
            .and_then(|t| t.partitions)
            .unwrap_or(DEFAULT_PARTITIONS);
        if p.spec.steps.is_empty() {
            self.error("spec.steps", "expected at least one step");
        }
        let mut seen = BTreeSet::new();
        for (i, step) in p.spec.steps.iter().enumerate() {
            let f = format!("spec.steps[{i}]");
            let Some(kind) = step.kind() else {
                self.error(
                    &f,
                    "set exactly one of validate, transform, enrich, classify, filter or ai",
                );
                continue;
            };
            let step_name = defaults::step_name(step, i);
            if !seen.insert(step_name.clone()) {
                self.error(
                    &format!("{f}.name"),
                    format!(
                        "step names must be unique within the pipeline; {step_name:?} is used twice"
                    ),
                );
            }
            match kind {
                StepKind::Validate(v) => {
                    self.json_schema(&format!("{f}.validate.schema"), &v.schema)
                }
                StepKind::Transform(t) => self.jq(&format!("{f}.transform.jq"), &t.jq),
                StepKind::Enrich(e) => {
                    let f = format!("{f}.enrich.http");
                    let h = &e.http;
                    self.url(&format!("{f}.url"), &h.url, true);
                    self.headers(&format!("{f}.headers"), &h.headers);
                    if let Some(body) = &h.body {
                        self.jq(&format!("{f}.body"), body);
                    }
                    self.positive_duration(&format!("{f}.cacheTTL"), h.cache_ttl.as_ref());
                    self.positive_duration(&format!("{f}.timeout"), h.timeout.as_ref());
                    if let Some(o) = &h.oauth2 {
                        self.oauth2(&format!("{f}.oauth2"), o, &h.headers);
                    }
                }
                StepKind::Classify(c) => {
                    for (j, rule) in c.rules.iter().enumerate() {
                        self.cel(
                            &format!("{f}.classify.rules[{j}].when"),
                            &rule.when,
                            Scope::Event,
                        );
                    }
                }
                StepKind::Filter(flt) => {
                    self.cel(&format!("{f}.filter.when"), &flt.when, Scope::Event)
                }
                StepKind::Ai(ai) => self.ai(&format!("{f}.ai"), ai),
            }
        }
        if let Some(proc_) = &p.spec.processing {
            self.workload("spec.processing", &proc_.workload, true, Some(partitions));
        }
        self.topic_settings("spec.topic", p.spec.topic.as_ref());
    }

    pub(super) fn bot_ref(&mut self, field: &str, name: &str) -> Option<&'a InputBot> {
        let ns = self.namespace.clone();
        let found = self
            .set
            .bots
            .iter()
            .find(|b| b.name_any() == name && defaults::namespace_of(*b) == ns);
        if found.is_none() {
            self.missing(
                self.options.references,
                field,
                format!("InputBot {ns}/{name} is not among the given resources"),
            );
        }
        found
    }
}
