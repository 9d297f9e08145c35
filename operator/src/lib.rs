//! The inputbot operator: controllers that reconcile `InputBot`, `Pipeline` and
//! `ActionBinding` resources into ConfigMaps, Deployments, Services, autoscalers and Kafka
//! topics running the generic runtime image.

pub mod topics;
