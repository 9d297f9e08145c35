//! The kafka action: the event as a record of a topic of the operator's Kafka cluster, in
//! CloudEvents binary mode (`ce_` headers, `traceparent`, data as the value), keyed by the
//! `key` template (default the event id), produced with the bus's idempotent `acks=all`
//! producer. An attempt succeeds once the delivery report says every in-sync replica has the
//! record; a refusal is a connection failure for the binding's retry policy (retried by
//! default, then dead-lettered). Built only on the Kafka bus (the act role in a cluster).

use std::{fmt, sync::Arc};

use futures::future::BoxFuture;
use inputbot_api::{
    binding::KafkaAction,
    config::FailureClass,
    expr::{Scope, Template},
};

use super::{ActionImpl, BuildError, other};
use crate::{bus::KafkaBus, delivery::AttemptError, event::Event};

pub(crate) struct KafkaImpl {
    topic: String,
    key: Option<Template>,
    bus: Arc<KafkaBus>,
}

impl fmt::Debug for KafkaImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaAction")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaImpl {
    pub(crate) fn build(spec: &KafkaAction, bus: Arc<KafkaBus>) -> Result<Self, BuildError> {
        if let Some(servers) = &spec.bootstrap_servers
            && servers != &bus.settings().bootstrap
        {
            return Err(BuildError::invalid(
                "kafka.bootstrapServers",
                format!(
                    "writing to another Kafka cluster ({servers}) is not supported yet; leave it out to write to the operator's cluster"
                ),
            ));
        }
        inputbot_api::names::check_topic(&spec.topic)
            .map_err(|e| BuildError::invalid("kafka.topic", e))?;
        let key = spec
            .key
            .as_deref()
            .map(|k| Template::compile(k, Scope::Event))
            .transpose()
            .map_err(|e| BuildError::invalid("kafka.key", e))?;
        bus.require(&[&spec.topic]);
        Ok(Self {
            topic: spec.topic.clone(),
            key,
            bus,
        })
    }
}

impl ActionImpl for KafkaImpl {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn attempt<'a>(
        &'a self,
        event: &'a Event,
        _attempt: u32,
    ) -> BoxFuture<'a, Result<(), AttemptError>> {
        Box::pin(async move {
            let key = match &self.key {
                Some(t) => t
                    .render(&event.activation())
                    .map_err(|e| other(format!("kafka.key: {e}")))?,
                None => event.id.clone(),
            };
            self.bus
                .publish_keyed(&self.topic, &key, event)
                .await
                .map_err(|e| AttemptError::new(FailureClass::Connection, e.to_string()))
        })
    }
}
