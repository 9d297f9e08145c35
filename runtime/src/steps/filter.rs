//! The filter step: events for which the CEL condition is false stop here, counted as
//! filtered (not an error). It runs on an expression thread ([`crate::eval`]).

use inputbot_api::expr::{CelExpr, EvalError, Limits, Scope};

use crate::event::Event;

/// A compiled condition.
pub(super) struct Filter(CelExpr);

impl Filter {
    pub(super) fn new(when: &str) -> Result<Self, String> {
        CelExpr::compile(when, Scope::Event).map(Self)
    }

    /// Whether the event goes on.
    pub(super) fn apply(&self, event: &Event, _limits: Limits) -> Result<bool, EvalError> {
        self.0
            .eval_bool(&event.activation())
            .map_err(EvalError::Failed)
    }
}
