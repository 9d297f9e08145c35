//! The generic inputbot runtime. One binary, `inputbot`, runs every role: `ingest`, `process`
//! and `act` in a cluster (each reading the config the operator mounted), or all of them in one
//! process with `inputbot run`. `inputbot validate` checks files before anyone applies them.
//!
//! ```text
//!  roles/     ingest, process, act — and the Context they share; local.rs runs all three
//!  sources/   webhook/ (routes, parsing, CloudEvents, idempotency, auth/), poll/, schedule
//!  steps/     validate, transform, enrich, classify, filter
//!  actions/   http, slack, email, log
//!  delivery/  retry, breaker, rate_limit: how one event reaches an action's target
//!  eval       jq and CEL off the async workers, under a time limit
//!  outbound   every HTTP call out: send, failure classes, Retry-After, limits, redaction
//!  bus/       the Bus trait; embedded (in one process)
//!  dlq/       dead-letter records, the store, notices, inspect, redrive
//! ```

pub mod actions;
pub mod bus;
pub mod delivery;
pub mod dlq;
pub mod eval;
pub mod event;
pub mod local;
pub mod metrics;
pub mod outbound;
pub mod roles;
pub mod secrets;
pub mod sources;
pub mod steps;
pub mod telemetry;
pub mod validate;
