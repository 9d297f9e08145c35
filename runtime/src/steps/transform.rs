//! The transform step: a jq program replaces the event data with its one output.

use inputbot_api::expr::JqProgram;

use crate::event::Event;

/// A compiled jq program.
pub(super) struct Transform(JqProgram);

impl Transform {
    pub(super) fn new(jq: &str) -> Result<Self, String> {
        JqProgram::compile(jq).map(Self)
    }

    /// Replaces the data; on an error the event is left as it was.
    pub(super) fn apply(&self, event: &mut Event) -> Result<(), String> {
        event.data = self.0.run_one(&event.data)?;
        Ok(())
    }
}
