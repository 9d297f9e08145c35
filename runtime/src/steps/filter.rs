//! The filter step: events for which the CEL condition is false stop here, counted as
//! filtered (not an error).

use inputbot_api::expr::{CelExpr, Scope};

use crate::event::Event;

/// A compiled condition.
pub(super) struct Filter(CelExpr);

impl Filter {
    pub(super) fn new(when: &str) -> Result<Self, String> {
        CelExpr::compile(when, Scope::Event).map(Self)
    }

    /// Whether the event goes on.
    pub(super) fn apply(&self, event: &Event) -> Result<bool, String> {
        self.0.eval_bool(&event.activation())
    }
}
