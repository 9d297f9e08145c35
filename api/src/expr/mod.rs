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
pub use jq::JqProgram;
pub use template::Template;

/// Where an expression runs, which decides the names it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// At webhook intake: `headers`, `data`, `event`.
    Intake,
    /// In a pipeline step or an action: `data`, `event`, `labels`.
    Event,
    /// In a dead-letter notice: `data`, `event`, `labels`, `error`.
    DeadLetter,
}

impl Scope {
    /// The variables an expression in this scope may use.
    pub fn variables(self) -> &'static [&'static str] {
        match self {
            Scope::Intake => &["headers", "data", "event"],
            Scope::Event => &["data", "event", "labels"],
            Scope::DeadLetter => &["data", "event", "labels", "error"],
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
