//! The classify step: CEL rules add labels to the event (every matching rule, or only the
//! first with `firstMatch`; the default label when none matched). Labels are added once. The
//! rules run on an expression thread, together under one time limit ([`crate::eval`]).

use inputbot_api::{
    expr::{CelExpr, EvalError, Limits, Scope},
    pipeline::ClassifyStep,
};

use crate::event::Event;

/// Compiled rules.
pub(super) struct Classify {
    rules: std::sync::Arc<[(CelExpr, String)]>,
    first_match: bool,
    default_label: Option<String>,
}

impl Classify {
    /// Compiles every rule; an error names the rule's index.
    pub(super) fn new(spec: &ClassifyStep) -> Result<Self, (usize, String)> {
        Ok(Self {
            rules: spec
                .rules
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    CelExpr::compile(&r.when, Scope::Event)
                        .map(|e| (e, r.label.clone()))
                        .map_err(|m| (j, m))
                })
                .collect::<Result<_, _>>()?,
            first_match: spec.first_match,
            default_label: spec.default_label.clone(),
        })
    }

    /// Adds the labels; on an error the event is left as it was.
    pub(super) fn apply(&self, event: &mut Event, _limits: Limits) -> Result<(), EvalError> {
        let vars = event.activation();
        let mut added = Vec::new();
        for (expr, label) in self.rules.iter() {
            if expr.eval_bool(&vars).map_err(EvalError::Failed)? {
                added.push(label.clone());
                if self.first_match {
                    break;
                }
            }
        }
        if added.is_empty() {
            added.extend(self.default_label.clone());
        }
        for label in added {
            if !event.labels.contains(&label) {
                event.labels.push(label);
            }
        }
        Ok(())
    }
}
