//! The ActionBinding controller: the act Deployment (+ autoscaler) and the binding's
//! dead-letter topic. Fetches the Pipeline (and its InputBot) named by `spec.pipelineRef`, or
//! the InputBot named by `spec.botRef`.

use inputbot_api::{ActionBinding, common::DeletionPolicy};
use kube::ResourceExt;
use serde_json::Value;

use super::{Reconciled, ns, topics_status};
use crate::{
    context::Context,
    error::{Error, Result},
    render::{self, BindingInputs, Plan},
};

#[async_trait::async_trait]
impl Reconciled for ActionBinding {
    const KIND: &'static str = "ActionBinding";

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
        let missing = |field, kind, name: &str| Error::MissingReference {
            field,
            kind,
            namespace: namespace.clone(),
            name: name.to_owned(),
        };
        let caps = ctx.capabilities().await;
        match (&self.spec.pipeline_ref, &self.spec.bot_ref) {
            (Some(r), _) => {
                let pipeline = ctx
                    .pipeline(&namespace, &r.name)
                    .await?
                    .ok_or_else(|| missing("spec.pipelineRef", "Pipeline", &r.name))?;
                let bot_name = &pipeline.spec.bot_ref.name;
                let bot = ctx.bot(&namespace, bot_name).await?;
                render::plan_binding(
                    self,
                    BindingInputs::Pipeline(&pipeline, bot.as_ref()),
                    &ctx.settings,
                    caps,
                )
                .map_err(Error::InvalidSpec)
            }
            (None, Some(r)) => {
                let bot = ctx
                    .bot(&namespace, &r.name)
                    .await?
                    .ok_or_else(|| missing("spec.botRef", "InputBot", &r.name))?;
                render::plan_binding(self, BindingInputs::Bot(&bot), &ctx.settings, caps)
                    .map_err(Error::InvalidSpec)
            }
            // The CRD's CEL rule rejects this at apply time; validate names the field.
            (None, None) => Err(Error::InvalidSpec(render::PlanError::Invalid(vec![
                inputbot_api::validate::Problem {
                    severity: inputbot_api::validate::Severity::Error,
                    resource: format!("ActionBinding {namespace}/{}", self.name_any()),
                    field: "spec".into(),
                    message: "set exactly one of pipelineRef or botRef".into(),
                },
            ]))),
        }
    }

    fn status_fields(&self, plan: Option<&Plan>) -> Value {
        topics_status(plan)
    }
}

/// Whether `binding` reads from the Pipeline `name` (for the watch on Pipelines).
pub fn reads_pipeline(binding: &ActionBinding, name: &str) -> bool {
    binding
        .spec
        .pipeline_ref
        .as_ref()
        .is_some_and(|r| r.name == name)
}

/// Whether `binding` reads the InputBot `name` directly (for the watch on InputBots).
pub fn reads_bot(binding: &ActionBinding, name: &str) -> bool {
    binding
        .spec
        .bot_ref
        .as_ref()
        .is_some_and(|r| r.name == name)
}
