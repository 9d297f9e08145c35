//! The generic inputbot runtime. One binary, `inputbot`, runs every role: `ingest`, `process`
//! and `act` in a cluster (each reading the config the operator mounted), or all of them in one
//! process with `inputbot run`. `inputbot validate` checks files before anyone applies them.

pub mod actions;
pub mod bus;
pub mod check;
pub mod delivery;
pub mod dlq;
pub mod event;
pub mod local;
pub mod metrics;
pub mod outbound;
pub mod secrets;
pub mod sources;
pub mod stages;
pub mod steps;
