//! ActionBinding: the pipeline or bot it reads, `when`, the action's own fields (HTTP, Slack,
//! email, Kafka, log), delivery (retry, circuit breaker, rate limit), the dead-letter notice
//! and the workers against the input topic's partitions.

use std::str::FromStr;

use kube::ResourceExt;

use super::{Checker, fields::is_header_name};
use crate::{
    ActionBinding,
    binding::{Action, ActionKind, Body, Delivery, Notify, Retry, SlackAction},
    config::RetryOn,
    defaults::{self, DEFAULT_PARTITIONS},
    expr::Scope,
    names,
};

impl Checker<'_> {
    pub(super) fn binding(&mut self, b: &ActionBinding) {
        let name = b.name_any();
        let ns = self.namespace.clone();
        self.names(&name, "act");
        self.topic(&names::binding_dlq_topic(&ns, &name));
        let mut partitions = DEFAULT_PARTITIONS;
        match (&b.spec.pipeline_ref, &b.spec.bot_ref) {
            (Some(p), None) => {
                let found = self
                    .set
                    .pipelines
                    .iter()
                    .find(|x| x.name_any() == p.name && defaults::namespace_of(*x) == ns);
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
            self.error(
                f,
                "set exactly one of http, slack, email, kafka, log, teams or sms",
            );
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
                if let Some(o) = &h.oauth2 {
                    self.oauth2(&format!("{f}.oauth2"), o, &h.headers);
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
            ActionKind::Teams(t) => self.teams(&format!("{f}.teams"), t),
            ActionKind::Sms(s) => self.sms(&format!("{f}.sms"), s),
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

    /// A retry policy (of a binding's delivery or an `ai` step).
    pub(super) fn retry(&mut self, f: &str, r: &Retry) {
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

    fn delivery(&mut self, f: &str, d: &Delivery) {
        if let Some(r) = &d.retry {
            self.retry(&format!("{f}.retry"), r);
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
