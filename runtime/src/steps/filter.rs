//! The filter step: events for which the CEL condition is false stop here, counted as
//! filtered (not an error). It runs on an expression thread ([`crate::eval`]).

use inputbot_api::expr::{CelExpr, EvalError, Limits, Scope};

use crate::{eval, event::Event};

/// A compiled condition.
pub(super) struct Filter(CelExpr);

impl Filter {
    pub(super) fn new(when: &str) -> Result<Self, String> {
        CelExpr::compile(when, Scope::Event).map(Self)
    }

    /// Whether the event goes on.
    pub(super) async fn apply(&self, event: &Event, limits: Limits) -> Result<bool, EvalError> {
        let expr = self.0.clone();
        let vars = event.activation();
        eval::run(limits, move || {
            expr.eval_bool(&vars).map_err(EvalError::Failed)
        })
        .await
    }
}
