//! Every check that needs no cluster: references between resources, expressions that compile,
//! JSON Schemas that are valid, cron expressions and time zones that parse, durations, names
//! that fit Kubernetes' and Kafka's limits once suffixed, and well-formed Secret references.
//!
//! Each [`Problem`] names the resource and the field path and says what was expected:
//! `ActionBinding team-a/crm: spec.when: invalid CEL expression …`. The operator runs this on
//! every reconcile (a problem becomes `Ready=False, reason: InvalidSpec`), `inputbot validate`
//! runs it before anyone applies, and `inputbot run` refuses to start on an error.

use std::{collections::BTreeSet, fmt, str::FromStr};

use kube::ResourceExt;
use serde_json::Value;

use crate::{
    ActionBinding, InputBot, Pipeline,
    binding::{Action, ActionKind, Body, Delivery, Notify, SlackAction},
    bot::{HmacPreset, Source, SourceKind, WebhookAuth},
    common::{Autoscaling, Duration, Headers, SecretKeyRef, TopicSettings, Workload},
    config::RetryOn,
    expr::{CelExpr, JqProgram, Scope, Template},
    manifest::ResourceSet,
    names,
    pipeline::StepKind,
    resolve::{self, DEFAULT_PARTITIONS},
};

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
        let namespace = object.namespace().unwrap_or_else(|| "default".to_owned());
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

    // ---- shared field checks -------------------------------------------------------------

    fn names(&mut self, name: &str, role: &str) {
        self.check(
            "metadata.namespace",
            names::check_dns_label(&self.namespace.clone()),
        );
        if self
            .check("metadata.name", names::check_dns_label(name))
            .is_some()
        {
            let child = names::child_name(name, role);
            self.check(
                "metadata.name",
                names::check_dns_label(&child).map_err(|_| {
                    format!(
                        "the {role} Service would be named {child:?}, {} characters; Kubernetes allows at most 63, so the name may have at most {}",
                        child.len(),
                        62 - role.len()
                    )
                }),
            );
        }
    }

    fn topic(&mut self, topic: &str) {
        self.check("metadata.name", names::check_topic(topic));
    }

    fn duration(&mut self, field: &str, d: Option<&Duration>) -> Option<std::time::Duration> {
        let d = d?;
        self.check(field, d.to_std())
    }

    fn positive_duration(&mut self, field: &str, d: Option<&Duration>) {
        if let Some(v) = self.duration(field, d)
            && v.is_zero()
        {
            self.error(field, "expected a duration greater than zero, found 0");
        }
    }

    fn secret(&mut self, field: &str, r: &SecretKeyRef) {
        let name_ok = self.check(
            &format!("{field}.name"),
            names::check_dns_subdomain(&r.name),
        );
        let key_ok = self.check(&format!("{field}.key"), names::check_secret_key(&r.key));
        if name_ok.is_none() || key_ok.is_none() || self.options.secrets == Presence::Ignore {
            return;
        }
        let ns = self.namespace.clone();
        if !self.set.has_secret(&ns, &r.name) {
            self.missing(
                self.options.secrets,
                field,
                format!("Secret {ns}/{} is not among the given files", r.name),
            );
        } else if self.set.secret_value(&ns, &r.name, &r.key).is_none() {
            // The Secret is right here: a missing key is a mistake in any mode.
            self.error(
                &format!("{field}.key"),
                format!("Secret {ns}/{} has no key {:?}", r.name, r.key),
            );
        }
    }

    fn headers(&mut self, field: &str, headers: &Headers) {
        for (name, value) in headers {
            let f = format!("{field}[{name}]");
            if !is_header_name(name) {
                self.error(
                    &f,
                    format!("expected an HTTP header name (letters, digits and !#$%&'*+-.^_`|~), found {name:?}"),
                );
            }
            match (&value.value, &value.secret_ref) {
                (Some(_), None) => {}
                (None, Some(r)) => self.secret(&format!("{f}.secretRef"), r),
                _ => self.error(&f, "set exactly one of value or secretRef"),
            }
        }
    }

    fn url(&mut self, field: &str, url: &str, templated: bool) {
        // Holes are checked as CEL; the rest must be a URL once they are filled in.
        let probe = if templated {
            match Template::compile(url, Scope::Event) {
                Ok(_) => strip_holes(url),
                Err(e) => {
                    self.error(field, e);
                    return;
                }
            }
        } else {
            url.to_owned()
        };
        match url::Url::parse(&probe) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(u) => self.error(
                field,
                format!(
                    "expected an http or https URL with a host, found {:?} (scheme {:?})",
                    url,
                    u.scheme()
                ),
            ),
            Err(e) => self.error(
                field,
                format!("expected an http or https URL, found {url:?}: {e}"),
            ),
        }
    }

    fn cel(&mut self, field: &str, source: &str, scope: Scope) {
        self.check(field, CelExpr::compile(source, scope));
    }

    fn jq(&mut self, field: &str, source: &str) {
        self.check(field, JqProgram::compile(source));
    }

    fn template(&mut self, field: &str, source: &str, scope: Scope) {
        self.check(field, Template::compile(source, scope));
    }

    fn json_schema(&mut self, field: &str, schema: &Value) {
        if let Err(e) = jsonschema::meta::validate(schema) {
            let at = e.instance_path().as_str().to_owned();
            self.error(
                field,
                format!(
                    "not a valid JSON Schema{}: {e}",
                    if at.is_empty() {
                        String::new()
                    } else {
                        format!(" at {at}")
                    }
                ),
            );
            return;
        }
        if let Err(e) = jsonschema::validator_for(schema) {
            self.error(field, format!("JSON Schema cannot be used: {e}"));
        }
    }

    fn workload(&mut self, field: &str, w: &Workload, lag_allowed: bool, partitions: Option<i32>) {
        if let Some(a) = &w.autoscaling {
            self.autoscaling(&format!("{field}.autoscaling"), a, lag_allowed, partitions);
        } else if let (Some(replicas), Some(p)) = (w.replicas, partitions)
            && replicas > p
        {
            self.report(
                    Severity::Warning,
                    &format!("{field}.replicas"),
                    format!("{replicas} replicas but the input topic has {p} partitions; only {p} will consume"),
                );
        }
    }

    fn autoscaling(
        &mut self,
        field: &str,
        a: &Autoscaling,
        lag_allowed: bool,
        partitions: Option<i32>,
    ) {
        if a.min_replicas > a.max_replicas {
            self.error(
                field,
                format!(
                    "minReplicas ({}) must be less than or equal to maxReplicas ({})",
                    a.min_replicas, a.max_replicas
                ),
            );
        }
        if a.lag.is_some() && !lag_allowed {
            self.error(
                &format!("{field}.lag"),
                "lag-based scaling needs a consumer; ingest of webhooks has no lag: scale on CPU",
            );
        }
        if let Some(p) = partitions
            && a.max_replicas > p
        {
            self.report(
                    Severity::Warning,
                    &format!("{field}.maxReplicas"),
                    format!(
                        "maxReplicas {} exceeds the {p} partitions of the input topic; the operator caps consumers at {p}",
                        a.max_replicas
                    ),
                );
        }
    }

    fn topic_settings(&mut self, field: &str, t: Option<&TopicSettings>) {
        if let Some(t) = t {
            self.positive_duration(&format!("{field}.retention"), t.retention.as_ref());
        }
    }

    // ---- InputBot -----------------------------------------------------------------------

    fn bot(&mut self, bot: &InputBot) {
        let name = bot.name_any();
        self.names(&name, "ingest");
        self.topic(&names::raw_topic(&self.namespace.clone(), &name));
        let mut seen_names = BTreeSet::new();
        let mut seen_paths = BTreeSet::new();
        if bot.spec.sources.is_empty() {
            self.error("spec.sources", "expected at least one source");
        }
        for (i, source) in bot.spec.sources.iter().enumerate() {
            let f = format!("spec.sources[{i}]");
            if !seen_names.insert(source.name.as_str()) {
                self.error(
                    &format!("{f}.name"),
                    format!(
                        "source names must be unique within the bot; {:?} is used twice",
                        source.name
                    ),
                );
            }
            if let Some(w) = &source.webhook
                && !seen_paths.insert(w.path.as_str())
            {
                self.error(
                    &format!("{f}.webhook.path"),
                    format!(
                        "webhook paths must be unique within the bot; {:?} is used twice",
                        w.path
                    ),
                );
            }
            self.source(&f, source);
        }
        if let Some(ingest) = &bot.spec.ingest {
            self.workload("spec.ingest", &ingest.workload, false, None);
        }
        self.topic_settings("spec.topic", bot.spec.topic.as_ref());
    }

    fn source(&mut self, f: &str, source: &Source) {
        // The name's shape is the schema's pattern, enforced on load and by the API server.
        let Some(kind) = source.kind() else {
            self.error(f, "set exactly one of webhook, poll, schedule or kafka");
            return;
        };
        match kind {
            SourceKind::Webhook(w) => {
                let f = format!("{f}.webhook");
                if !w.path.starts_with('/') {
                    self.error(
                        &format!("{f}.path"),
                        format!("path must start with '/', found {:?}", w.path),
                    );
                } else if ["/healthz", "/readyz", "/metrics"].contains(&w.path.as_str()) {
                    self.error(
                        &format!("{f}.path"),
                        format!(
                            "{} is served by the runtime itself; choose another path",
                            w.path
                        ),
                    );
                }
                self.auth(&format!("{f}.auth"), &w.auth);
                if let Some(schema) = &w.schema {
                    self.json_schema(&format!("{f}.schema"), schema);
                }
                if let Some(key) = &w.idempotency_key {
                    self.cel(&format!("{f}.idempotencyKey"), key, Scope::Intake);
                }
                self.positive_duration(
                    &format!("{f}.idempotencyWindow"),
                    w.idempotency_window.as_ref(),
                );
                if w.max_body_bytes == Some(0) {
                    self.error(&format!("{f}.maxBodyBytes"), "expected at least 1 byte");
                }
            }
            SourceKind::Poll(p) => {
                let f = format!("{f}.poll");
                self.url(&format!("{f}.url"), &p.url, false);
                if let Some(d) = self.duration(&format!("{f}.interval"), Some(&p.interval))
                    && d < std::time::Duration::from_secs(1)
                {
                    self.error(
                        &format!("{f}.interval"),
                        format!("expected at least 1s between polls, found {}", p.interval.0),
                    );
                }
                self.headers(&format!("{f}.headers"), &p.headers);
                for (field, pointer) in [("itemsPath", &p.items_path), ("idField", &p.id_field)] {
                    if let Some(ptr) = pointer
                        && !ptr.is_empty()
                        && !ptr.starts_with('/')
                    {
                        self.error(
                                &format!("{f}.{field}"),
                                format!("expected a JSON pointer such as /items/0/id (starting with '/'), found {ptr:?}"),
                            );
                    }
                }
                self.positive_duration(&format!("{f}.timeout"), p.timeout.as_ref());
            }
            SourceKind::Schedule(s) => {
                let f = format!("{f}.schedule");
                self.check(
                    &format!("{f}.cron"),
                    resolve::parse_cron(&s.cron).map(|_| ()),
                );
                if let Some(tz) = &s.time_zone {
                    self.check(
                        &format!("{f}.timeZone"),
                        chrono_tz::Tz::from_str(tz).map(|_| ()).map_err(|_| {
                            format!("expected an IANA time zone such as Europe/Berlin or UTC, found {tz:?}")
                        }),
                    );
                }
            }
            SourceKind::Kafka(k) => {
                self.check(&format!("{f}.kafka.topic"), names::check_topic(&k.topic));
            }
        }
    }

    fn auth(&mut self, f: &str, auth: &WebhookAuth) {
        let set = [
            auth.hmac.is_some(),
            auth.bearer.is_some(),
            auth.basic.is_some(),
            auth.none.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if set != 1 {
            self.error(f, "set exactly one of hmac, bearer, basic or none");
            return;
        }
        if let Some(h) = &auth.hmac {
            let f = format!("{f}.hmac");
            self.secret(&format!("{f}.secretRef"), &h.secret_ref);
            for (i, r) in h.additional_secret_refs.iter().enumerate() {
                self.secret(&format!("{f}.additionalSecretRefs[{i}]"), r);
            }
            let preset = h.preset.unwrap_or(HmacPreset::Generic);
            if preset == HmacPreset::Generic && h.header.is_none() {
                self.error(
                    &format!("{f}.header"),
                    "a generic hmac needs the header that carries the signature",
                );
            }
            self.positive_duration(&format!("{f}.tolerance"), h.tolerance.as_ref());
        }
        if let Some(b) = &auth.bearer {
            self.secret(&format!("{f}.bearer.secretRef"), &b.secret_ref);
        }
        if let Some(b) = &auth.basic {
            self.secret(
                &format!("{f}.basic.passwordSecretRef"),
                &b.password_secret_ref,
            );
        }
    }

    // ---- Pipeline -----------------------------------------------------------------------

    fn pipeline(&mut self, p: &Pipeline) {
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
                    "set exactly one of validate, transform, enrich, classify or filter",
                );
                continue;
            };
            let step_name = resolve::step_name(step, i);
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
            }
        }
        if let Some(proc_) = &p.spec.processing {
            self.workload("spec.processing", &proc_.workload, true, Some(partitions));
        }
        self.topic_settings("spec.topic", p.spec.topic.as_ref());
    }

    fn bot_ref(&mut self, field: &str, name: &str) -> Option<&'a InputBot> {
        let ns = self.namespace.clone();
        let found =
            self.set.bots.iter().find(|b| {
                b.name_any() == name && b.namespace().as_deref().unwrap_or("default") == ns
            });
        if found.is_none() {
            self.missing(
                self.options.references,
                field,
                format!("InputBot {ns}/{name} is not among the given resources"),
            );
        }
        found
    }

    // ---- ActionBinding ------------------------------------------------------------------

    fn binding(&mut self, b: &ActionBinding) {
        let name = b.name_any();
        let ns = self.namespace.clone();
        self.names(&name, "act");
        self.topic(&names::binding_dlq_topic(&ns, &name));
        let mut partitions = DEFAULT_PARTITIONS;
        match (&b.spec.pipeline_ref, &b.spec.bot_ref) {
            (Some(p), None) => {
                let found = self.set.pipelines.iter().find(|x| {
                    x.name_any() == p.name && x.namespace().as_deref().unwrap_or("default") == ns
                });
                match found {
                    Some(pl) => {
                        partitions = pl
                            .spec
                            .topic
                            .as_ref()
                            .and_then(|t| t.partitions)
                            .unwrap_or(partitions)
                    }
                    None => self.missing(
                        self.options.references,
                        "spec.pipelineRef.name",
                        format!("Pipeline {ns}/{} is not among the given resources", p.name),
                    ),
                }
            }
            (None, Some(r)) => {
                if let Some(bot) = self.bot_ref("spec.botRef.name", &r.name) {
                    partitions = bot
                        .spec
                        .topic
                        .as_ref()
                        .and_then(|t| t.partitions)
                        .unwrap_or(partitions);
                }
            }
            _ => self.error("spec", "set exactly one of pipelineRef or botRef"),
        }
        if let Some(when) = &b.spec.when {
            self.cel("spec.when", when, Scope::Event);
        }
        self.action("spec.action", &b.spec.action);
        if let Some(d) = &b.spec.delivery {
            self.delivery("spec.delivery", d);
        }
        if let Some(Notify {
            on_dead_letter: Some(n),
        }) = &b.spec.notify
        {
            self.slack(
                "spec.notify.onDeadLetter.slack",
                &n.slack,
                Scope::DeadLetter,
            );
        }
        if let Some(w) = &b.spec.workers {
            self.workload("spec.workers", w, true, Some(partitions));
        }
        self.topic_settings("spec.topic", b.spec.topic.as_ref());
    }

    fn action(&mut self, f: &str, action: &Action) {
        let Some(kind) = action.kind() else {
            self.error(f, "set exactly one of http, slack, email, kafka or log");
            return;
        };
        match kind {
            ActionKind::Http(h) => {
                let f = format!("{f}.http");
                self.url(&format!("{f}.url"), &h.url, true);
                self.headers(&format!("{f}.headers"), &h.headers);
                if let Some(body) = &h.body {
                    self.body(&format!("{f}.body"), body);
                }
                self.positive_duration(&format!("{f}.timeout"), h.timeout.as_ref());
                if let Some(hdr) = &h.idempotency_header
                    && !hdr.is_empty()
                    && !is_header_name(hdr)
                {
                    self.error(
                        &format!("{f}.idempotencyHeader"),
                        format!("expected an HTTP header name, found {hdr:?}"),
                    );
                }
            }
            ActionKind::Slack(s) => self.slack(&format!("{f}.slack"), s, Scope::Event),
            ActionKind::Email(e) => {
                let f = format!("{f}.email");
                if e.smtp.host.trim().is_empty() {
                    self.error(&format!("{f}.smtp.host"), "expected a host name");
                }
                if let Some(r) = &e.smtp.password_secret_ref {
                    self.secret(&format!("{f}.smtp.passwordSecretRef"), r);
                    if e.smtp.username.is_none() {
                        self.error(&format!("{f}.smtp.username"), "a password needs a username");
                    }
                }
                self.positive_duration(&format!("{f}.smtp.timeout"), e.smtp.timeout.as_ref());
                self.check(&format!("{f}.from"), check_mailbox(&e.from));
                for (i, to) in e.to.iter().enumerate() {
                    self.check(&format!("{f}.to[{i}]"), check_mailbox(to));
                }
                self.template(&format!("{f}.subject"), &e.subject, Scope::Event);
                self.template(&format!("{f}.body"), &e.body, Scope::Event);
            }
            ActionKind::Kafka(k) => {
                self.check(&format!("{f}.kafka.topic"), names::check_topic(&k.topic));
                if let Some(key) = &k.key {
                    self.template(&format!("{f}.kafka.key"), key, Scope::Event);
                }
            }
            ActionKind::Log(l) => {
                if let Some(t) = &l.template {
                    self.template(&format!("{f}.log.template"), t, Scope::Event);
                }
            }
        }
    }

    fn body(&mut self, f: &str, body: &Body) {
        match (&body.jq, &body.template) {
            (Some(jq), None) => self.jq(&format!("{f}.jq"), jq),
            (None, Some(t)) => self.template(&format!("{f}.template"), t, Scope::Event),
            _ => self.error(f, "set exactly one of jq or template"),
        }
    }

    fn slack(&mut self, f: &str, s: &SlackAction, scope: Scope) {
        self.secret(&format!("{f}.webhookSecretRef"), &s.webhook_secret_ref);
        self.template(&format!("{f}.text"), &s.text, scope);
        self.positive_duration(&format!("{f}.timeout"), s.timeout.as_ref());
    }

    fn delivery(&mut self, f: &str, d: &Delivery) {
        if let Some(r) = &d.retry {
            let f = format!("{f}.retry");
            let initial = self.duration(&format!("{f}.initialDelay"), r.initial_delay.as_ref());
            let max = self.duration(&format!("{f}.maxDelay"), r.max_delay.as_ref());
            if let (Some(i), Some(m)) = (initial, max)
                && i > m
            {
                self.error(
                    &format!("{f}.initialDelay"),
                    format!(
                        "initialDelay ({}) must not exceed maxDelay ({})",
                        r.initial_delay.as_ref().map_or("", |d| &d.0),
                        r.max_delay.as_ref().map_or("", |d| &d.0)
                    ),
                );
            }
            if r.max_attempts == Some(0) {
                self.error(&format!("{f}.maxAttempts"), "expected at least 1 attempt");
            }
            for (i, entry) in r.retry_on.iter().flatten().enumerate() {
                self.check(
                    &format!("{f}.retryOn[{i}]"),
                    RetryOn::from_str(entry).map(|_| ()),
                );
            }
        }
        if let Some(cb) = &d.circuit_breaker {
            let f = format!("{f}.circuitBreaker");
            if let Some(r) = cb.failure_ratio
                && !(r > 0.0 && r <= 1.0)
            {
                self.error(
                    &format!("{f}.failureRatio"),
                    format!("expected a ratio above 0 and at most 1, found {r}"),
                );
            }
            self.positive_duration(&format!("{f}.openFor"), cb.open_for.as_ref());
            self.positive_duration(&format!("{f}.window"), cb.window.as_ref());
        }
        if let Some(rl) = &d.rate_limit
            && !(rl.per_second > 0.0 && rl.per_second.is_finite())
        {
            self.error(
                &format!("{f}.rateLimit.perSecond"),
                format!("expected a rate above 0, found {}", rl.per_second),
            );
        }
    }
}

/// Replaces every `{{ … }}` hole by a placeholder, to check the text around it.
fn strip_holes(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        out.push('x');
        match rest[start..].find("}}") {
            Some(end) => rest = &rest[start + end + 2..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

fn is_header_name(name: &str) -> bool {
    http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

/// `user@host` or `Name <user@host>`.
fn check_mailbox(s: &str) -> Result<(), String> {
    let addr = match (s.find('<'), s.rfind('>')) {
        (Some(a), Some(b)) if a < b && s.ends_with('>') => &s[a + 1..b],
        (None, None) => s,
        _ => {
            return Err(format!(
                "expected an address such as bot@example.com or Bot <bot@example.com>, found {s:?}"
            ));
        }
    };
    match addr.split_once('@') {
        Some((user, host))
            if !user.is_empty() && host.contains('.') && !addr.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "expected an address such as bot@example.com or Bot <bot@example.com>, found {s:?}"
        )),
    }
}
