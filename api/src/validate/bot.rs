//! InputBot: unique source names and webhook paths, each source's own fields (webhook auth,
//! schema and idempotency key; poll URL, interval and pointers; schedule cron and time zone;
//! Kafka topic), the ingest workload and the topic settings.

use std::{collections::BTreeSet, str::FromStr};

use kube::ResourceExt;

use super::Checker;
use crate::{
    InputBot,
    bot::{HmacPreset, Source, SourceKind, WebhookAuth},
    defaults,
    expr::Scope,
    names,
};

impl Checker<'_> {
    pub(super) fn bot(&mut self, bot: &InputBot) {
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
                if let Some(o) = &p.oauth2 {
                    self.oauth2(&format!("{f}.oauth2"), o, &p.headers);
                }
            }
            SourceKind::Schedule(s) => {
                let f = format!("{f}.schedule");
                self.check(
                    &format!("{f}.cron"),
                    defaults::parse_cron(&s.cron).map(|_| ()),
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
            auth.jwt.is_some(),
            auth.api_key.is_some(),
            auth.none.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if set != 1 {
            self.error(
                f,
                "set exactly one of hmac, bearer, basic, jwt, apiKey or none",
            );
            return;
        }
        if let Some(j) = &auth.jwt {
            self.jwt(&format!("{f}.jwt"), j);
        }
        if let Some(k) = &auth.api_key {
            self.api_key(&format!("{f}.apiKey"), k);
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
}
