//! Every check that needs no cluster: references between resources, expressions that compile,
//! JSON Schemas that are valid, cron expressions and time zones that parse, durations, names
//! that fit Kubernetes' and Kafka's limits once suffixed, and well-formed Secret references.
//!
//! Each [`Problem`] names the resource and the field path and says what was expected:
//! `ActionBinding team-a/crm: spec.when: invalid CEL expression …`. The operator runs this on
//! every reconcile (a problem becomes `Ready=False, reason: InvalidSpec`), `inputbot validate`
//! runs it before anyone applies, and `inputbot run` refuses to start on an error.
//!
//! ```text
//!  validate/
//!   mod.rs       Problem, Severity, Options; validate() walks the set with one Checker per resource
//!   fields.rs    checks shared by every kind: names, durations, Secrets, headers, URLs, expressions
//!   bot.rs       InputBot: sources, webhook auth, poll, schedule
//!   auth.rs      jwt and apiKey webhook auth, OAuth2 client credentials
//!   pipeline.rs  Pipeline: steps and the bot it reads
//!   ai.rs        the ai step: endpoint, API key, prompts, the answer's schema, retry, cache
//!   binding.rs   ActionBinding: the reference, when, the action, delivery, notify
//!   messaging.rs the teams and sms actions: Secrets, templates, phone numbers
//! ```

mod ai;
mod auth;
mod binding;
mod bot;
mod fields;
mod messaging;
mod pipeline;

pub use messaging::check_e164;

use std::fmt;

use kube::ResourceExt;

use crate::{defaults, manifest::ResourceSet};

/// How serious a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The resource cannot run as written.
    Error,
    /// Worth a look; the resource can run.
    Warning,
}

/// One problem with one field of one resource.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// `Kind namespace/name`.
    pub resource: String,
    /// Field path, e.g. `spec.sources[0].webhook.path`.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.resource, self.field, self.message)
    }
}

/// How to treat something the set does not contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// Missing is an error (local runs; the operator for references it fetched).
    Required,
    /// Missing is a warning: it may exist in the cluster (`inputbot validate`).
    Warn,
    /// Not checked (the operator does not read Secret values).
    Ignore,
}

/// What the set is expected to contain.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Referenced InputBots and Pipelines.
    pub references: Presence,
    /// Referenced Secrets and their keys.
    pub secrets: Presence,
}

impl Options {
    /// Everything must be in the set: `inputbot run`.
    pub const LOCAL: Options = Options {
        references: Presence::Required,
        secrets: Presence::Required,
    };
    /// Files checked before `kubectl apply`: missing things may already be in the cluster.
    pub const FILES: Options = Options {
        references: Presence::Warn,
        secrets: Presence::Warn,
    };
    /// The operator: references were fetched; Secrets are the kubelet's business.
    pub const OPERATOR: Options = Options {
        references: Presence::Required,
        secrets: Presence::Ignore,
    };
}

/// Validates every resource of the set; problems come in resource order.
pub fn validate(set: &ResourceSet, options: Options) -> Vec<Problem> {
    let mut out = Vec::new();
    for bot in &set.bots {
        Checker::new(set, options, "InputBot", bot, &mut out).bot(bot);
    }
    for pipeline in &set.pipelines {
        Checker::new(set, options, "Pipeline", pipeline, &mut out).pipeline(pipeline);
    }
    for binding in &set.bindings {
        Checker::new(set, options, "ActionBinding", binding, &mut out).binding(binding);
    }
    out
}

/// Whether any problem is an error.
pub fn has_errors(problems: &[Problem]) -> bool {
    problems.iter().any(|p| p.severity == Severity::Error)
}

struct Checker<'a> {
    set: &'a ResourceSet,
    options: Options,
    resource: String,
    namespace: String,
    out: &'a mut Vec<Problem>,
}
impl<'a> Checker<'a> {
    fn new<K: kube::Resource>(
        set: &'a ResourceSet,
        options: Options,
        kind: &str,
        object: &K,
        out: &'a mut Vec<Problem>,
    ) -> Self {
        let namespace = defaults::namespace_of(object);
        Self {
            set,
            options,
            resource: format!("{kind} {namespace}/{}", object.name_any()),
            namespace,
            out,
        }
    }

    fn report(&mut self, severity: Severity, field: &str, message: impl Into<String>) {
        self.out.push(Problem {
            severity,
            resource: self.resource.clone(),
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn error(&mut self, field: &str, message: impl Into<String>) {
        self.report(Severity::Error, field, message);
    }

    fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(field, e);
                None
            }
        }
    }

    fn missing(&mut self, presence: Presence, field: &str, message: String) {
        match presence {
            Presence::Required => self.error(field, message),
            Presence::Warn => self.report(
                Severity::Warning,
                field,
                format!("{message}; it must exist in the cluster"),
            ),
            Presence::Ignore => {}
        }
    }
}
