//! The Pipeline controller: the process Deployment (+ autoscaler) and the output and
//! dead-letter topics. Fetches the InputBot named by `spec.botRef`; a missing bot is
//! `ReferencesResolved=False` until it appears (the bot watch brings the pipeline back).

use inputbot_api::{Pipeline, common::DeletionPolicy};
use kube::ResourceExt;
use serde_json::Value;

use super::{Reconciled, ns, topics_status};
use crate::{
    context::Context,
    error::{Error, Result},
    render::{self, Plan},
};

#[async_trait::async_trait]
impl Reconciled for Pipeline {
    const KIND: &'static str = "Pipeline";

    fn deletion_policy(&self) -> DeletionPolicy {
        self.spec.deletion_policy.unwrap_or_default()
    }

    fn current_status(&self) -> Option<Value> {
        self.status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
    }

    async fn plan(&self, ctx: &Context) -> Result<Plan> {
        let namespace = ns(self);
        let bot_name = &self.spec.bot_ref.name;
        let bot = ctx
            .bot(&namespace, bot_name)
            .await?
            .ok_or_else(|| Error::MissingReference {
                field: "spec.botRef",
                kind: "InputBot",
                namespace: namespace.clone(),
                name: bot_name.clone(),
            })?;
        let caps = ctx.capabilities().await;
        render::plan_pipeline(self, &bot, &ctx.settings, caps).map_err(Error::InvalidSpec)
    }

    fn status_fields(&self, plan: Option<&Plan>) -> Value {
        topics_status(plan)
    }
}

/// Whether `pipeline` references the InputBot `namespace/name` (for the watch on InputBots).
pub fn references(pipeline: &Pipeline, namespace: &Option<String>, name: &str) -> bool {
    pipeline.spec.bot_ref.name == name && &pipeline.namespace() == namespace
}
