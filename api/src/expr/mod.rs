//! The three expression languages of a bot, compiled once and evaluated many times:
//!
//! - **CEL** for every condition (`when`, classify rules, idempotency keys). What an expression
//!   may name depends on where it runs ([`Scope`]); an unknown name is a compile-time error.
//! - **jq** (through jaq) for reshaping JSON. Its input is the event data. Functions that reach
//!   outside the event (`env`, `$ENV`, `input`) are not available.
//! - **text templates**: literal text with `{{ CEL }}` holes, for human-readable strings.
//!
//! Validation compiles every expression of a resource with these same functions, so what
//! validates is exactly what the runtime can run.
//!
//! ```text
//!  expr/
//!   mod.rs       Scope: which names an expression may use where it runs
//!   cel.rs       CelExpr, Activation (the bound values), JSON ⇄ CEL
//!   jq.rs        JqProgram
//!   template.rs  Template: text with {{ CEL }} holes, built on cel
//! ```

mod cel;
mod jq;
mod template;

pub use cel::{Activation, CelExpr};
pub use jq::{JqProgram, Limits, nesting_exceeds};
pub use template::Template;

/// The deepest nesting of arrays and objects a JSON parse accepts, everywhere in inputbot (the
/// same as the intake's parser, serde_json).
pub const MAX_JSON_DEPTH: usize = 128;

/// Why an evaluation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The expression broke a limit (steps, time or nesting): dead-letter class `budget`.
    #[error("{0}")]
    Budget(String),
    /// The expression failed on this input.
    #[error("{0}")]
    Failed(String),
}

impl EvalError {
    /// The dead-letter class: `budget` for a broken limit, else `otherwise`.
    pub fn class(&self, otherwise: &'static str) -> &'static str {
        match self {
            EvalError::Budget(_) => "budget",
            EvalError::Failed(_) => otherwise,
        }
    }
}

impl From<EvalError> for String {
    fn from(e: EvalError) -> Self {
        e.to_string()
    }
}

/// Where an expression runs, which decides the names it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// At webhook intake: `headers`, `data`, `event`, `auth`.
    Intake,
    /// In a pipeline step or an action: `data`, `event`, `labels`, `auth`.
    Event,
    /// In a dead-letter notice: `data`, `event`, `labels`, `auth`, `error`.
    DeadLetter,
}

impl Scope {
    /// The variables an expression in this scope may use.
    pub fn variables(self) -> &'static [&'static str] {
        match self {
            Scope::Intake => &["headers", "data", "event", "auth"],
            Scope::Event => &["data", "event", "labels", "auth"],
            Scope::DeadLetter => &["data", "event", "labels", "auth", "error"],
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use serde_json::json;

    use super::Activation;

    /// The values a pipeline step sees, for the tests of every language.
    pub(crate) fn event_vars() -> Activation {
        Activation::new()
            .with(
                "data",
                json!({"text": "please refund", "n": 3, "from": "a@b.c"}),
            )
            .with("labels", json!(["billing"]))
            .with("event", json!({"id": "e1", "type": "t"}))
    }
}
