//! The transform step: a jq program replaces the event data with its one output. It runs on an
//! expression thread under its limits ([`crate::eval`], called from the step runner).

use inputbot_api::expr::{EvalError, JqProgram, Limits};

use crate::event::Event;

/// A compiled jq program.
pub(super) struct Transform(JqProgram);

impl Transform {
    pub(super) fn new(jq: &str) -> Result<Self, String> {
        JqProgram::compile(jq).map(Self)
    }

    /// Replaces the data; on an error the event is left as it was. Call it on an expression
    /// thread.
    pub(super) fn apply(&self, event: &mut Event, limits: Limits) -> Result<(), EvalError> {
        event.data = self.0.run_one_limited(&event.data, limits)?;
        Ok(())
    }
}
