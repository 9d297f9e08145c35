//! The inputbot operator: controllers that reconcile `InputBot`, `Pipeline` and
//! `ActionBinding` resources into ConfigMaps, Deployments, Services, autoscalers and Kafka
//! topics running the generic runtime image.
//!
//! ```text
//!  main ──▶ run: leader election ─▶ controller::{bot, pipeline, binding}
//!                                     fetch → render::plan_* (pure) → apply → prune → status
//!                                                                 └─▶ topics::TopicProvisioner
//!       └─▶ render -f: render::render_files (the same pure path, printed)
//! ```

pub mod context;
pub mod controller;
pub mod error;
pub mod events;
pub mod metrics;
pub mod render;
pub mod run;
pub mod settings;
pub mod topics;
