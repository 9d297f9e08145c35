//! The InputBot controller: intake Deployments, Service, budget, Ingress, autoscaler and the
//! raw topic. An InputBot references nothing, so fetch is empty.

use inputbot_api::{InputBot, common::DeletionPolicy};
use serde_json::{Value, json};

use super::Reconciled;
use crate::{
    context::Context,
    error::{Error, Result},
    render::{self, Plan},
};

#[async_trait::async_trait]
impl Reconciled for InputBot {
    const KIND: &'static str = "InputBot";

    fn deletion_policy(&self) -> DeletionPolicy {
        self.spec.deletion_policy.unwrap_or_default()
    }

    fn current_status(&self) -> Option<Value> {
        self.status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
    }

    async fn plan(&self, ctx: &Context) -> Result<Plan> {
        let caps = ctx.capabilities().await;
        render::plan_bot(self, &ctx.settings, caps).map_err(Error::InvalidSpec)
    }

    fn status_fields(&self, plan: Option<&Plan>) -> Value {
        let mut out = serde_json::Map::new();
        if let Some(plan) = plan {
            if !plan.endpoints.is_empty() {
                out.insert(
                    "endpoints".into(),
                    plan.endpoints
                        .iter()
                        .map(|(source, url)| json!({"source": source, "url": url}))
                        .collect(),
                );
            }
            if let Some(t) = &plan.output_topic {
                out.insert("topic".into(), t.clone().into());
            }
        }
        Value::Object(out)
    }
}
