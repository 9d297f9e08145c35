//! inputbot's resource API: the `InputBot`, `Pipeline` and `ActionBinding` custom resources
//! (group `inputbot.dev`, version `v1alpha1`), the resolved runtime config the operator hands
//! to the runtime, and the pure functions between them.
//!
//! ```text
//!  YAML files ──manifest──▶ ResourceSet ──validate──▶ [Problem]   (no cluster needed)
//!                                 └──────resolve────▶ Resolved { ingest, process, act }
//!                                                        │ one ComponentConfig per Deployment
//!                                                        ▼
//!                                        operator (ConfigMap)  ·  inputbot run (in memory)
//! ```
//!
//! Nothing here talks to a cluster or a broker; the operator and the runtime depend on this
//! crate, never on each other.

pub mod ai;
pub mod auth;
pub mod binding;
pub mod bot;
pub mod common;
pub mod config;
pub mod crd;
pub mod defaults;
pub mod expr;
pub mod manifest;
pub mod messaging;
pub mod names;
pub mod resolve;
pub mod validate;

pub use binding::{ActionBinding, ActionBindingSpec, ActionBindingStatus};
pub use bot::{InputBot, InputBotSpec, InputBotStatus};
pub use pipeline::{Pipeline, PipelineSpec, PipelineStatus};

pub mod pipeline;

/// API group of the resources.
pub const GROUP: &str = "inputbot.dev";
/// API version of the resources.
pub const VERSION: &str = "v1alpha1";
