//! The log action: prints the rendered template, or the event data as JSON, as one line on
//! stdout (logs go to stderr), for trying a bot locally.

use std::{fmt, io::Write as _};

use futures::future::BoxFuture;
use inputbot_api::{
    binding::LogAction,
    expr::{Scope, Template},
};

use super::{ActionImpl, BuildError, other};
use crate::{delivery::AttemptError, event::Event};

pub(super) struct LogImpl {
    template: Option<Template>,
    source: Option<String>,
}

impl fmt::Debug for LogImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogAction")
            .field("template", &self.source)
            .finish()
    }
}

impl LogImpl {
    pub(super) fn build(spec: &LogAction) -> Result<Self, BuildError> {
        let template = spec
            .template
            .as_deref()
            .map(|t| Template::compile(t, Scope::Event))
            .transpose()
            .map_err(|e| BuildError::invalid("log.template", e))?;
        Ok(Self {
            template,
            source: spec.template.clone(),
        })
    }

    /// The line for `event`: the rendered template, or the data as compact JSON.
    pub(super) fn line(&self, event: &Event) -> Result<String, AttemptError> {
        match &self.template {
            Some(template) => template
                .render(&event.activation())
                .map_err(|e| other(format!("log.template: {e}"))),
            None => Ok(event.data.to_string()),
        }
    }
}

impl ActionImpl for LogImpl {
    fn kind(&self) -> &'static str {
        "log"
    }

    fn attempt<'a>(
        &'a self,
        event: &'a Event,
        _attempt: u32,
    ) -> BoxFuture<'a, Result<(), AttemptError>> {
        Box::pin(async move {
            let line = self.line(event)?;
            // A closed stdout is no reason to fail (and retry) a delivery.
            let _ = writeln!(std::io::stdout().lock(), "{line}");
            Ok(())
        })
    }
}
