//! The checks every resource kind shares: names that fit once suffixed, topics, durations,
//! Secret references, HTTP headers and URLs, the three expression languages, JSON Schemas,
//! workloads and autoscaling.

use serde_json::Value;

use super::{Checker, Presence, Severity};
use crate::{
    common::{Autoscaling, Duration, Headers, SecretKeyRef, TopicSettings, Workload},
    expr::{CelExpr, JqProgram, Scope, Template},
    names,
};

impl Checker<'_> {
    pub(super) fn names(&mut self, name: &str, role: &str) {
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

    pub(super) fn topic(&mut self, topic: &str) {
        self.check("metadata.name", names::check_topic(topic));
    }

    pub(super) fn duration(
        &mut self,
        field: &str,
        d: Option<&Duration>,
    ) -> Option<std::time::Duration> {
        let d = d?;
        self.check(field, d.to_std())
    }

    pub(super) fn positive_duration(&mut self, field: &str, d: Option<&Duration>) {
        if let Some(v) = self.duration(field, d)
            && v.is_zero()
        {
            self.error(field, "expected a duration greater than zero, found 0");
        }
    }

    pub(super) fn secret(&mut self, field: &str, r: &SecretKeyRef) {
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

    pub(super) fn headers(&mut self, field: &str, headers: &Headers) {
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

    pub(super) fn url(&mut self, field: &str, url: &str, templated: bool) {
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

    pub(super) fn cel(&mut self, field: &str, source: &str, scope: Scope) {
        self.check(field, CelExpr::compile(source, scope));
    }

    pub(super) fn jq(&mut self, field: &str, source: &str) {
        self.check(field, JqProgram::compile(source));
    }

    pub(super) fn template(&mut self, field: &str, source: &str, scope: Scope) {
        self.check(field, Template::compile(source, scope));
    }

    pub(super) fn json_schema(&mut self, field: &str, schema: &Value) {
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

    pub(super) fn workload(
        &mut self,
        field: &str,
        w: &Workload,
        lag_allowed: bool,
        partitions: Option<i32>,
    ) {
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

    pub(super) fn autoscaling(
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

    pub(super) fn topic_settings(&mut self, field: &str, t: Option<&TopicSettings>) {
        if let Some(t) = t {
            self.positive_duration(&format!("{field}.retention"), t.retention.as_ref());
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

pub(super) fn is_header_name(name: &str) -> bool {
    http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}
